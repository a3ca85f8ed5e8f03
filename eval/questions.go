package eval

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Question is one evaluation item.
type Question struct {
	ID       string `json:"id"`
	Question string `json:"question"`
	Expected string `json:"expected"`
}

//go:embed seed-questions.jsonl
var seedQuestions []byte

// SeedName names the embedded seed question set in reports.
const SeedName = "seed (10 academic Q&A pairs of the original QLoRA evaluation, embedded)"

// LoadQuestions reads a JSON Lines question file, or the embedded seed set
// when path is empty. It returns the questions and the raw bytes (for hashing).
func LoadQuestions(path string) ([]Question, []byte, error) {
	if path == "" {
		qs, err := ParseQuestions("seed-questions.jsonl", bytes.NewReader(seedQuestions))
		return qs, seedQuestions, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	qs, err := ParseQuestions(path, bytes.NewReader(b))
	return qs, b, err
}

// maxQuestionLine bounds one line of a questions file.
const maxQuestionLine = 16 << 20

// ParseQuestions reads JSON Lines: {"question","expected"[,"id"]} or the
// Alpaca form {"instruction"[,"input"],"output"[,"id"]}. Blank lines are
// skipped; the id defaults to the line number. name is used in errors.
func ParseQuestions(name string, r io.Reader) ([]Question, error) {
	var qs []Question
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, maxQuestionLine)
	n := 1
	for ; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%s: line %d: %s", name, n, fmt.Sprintf(format, a...))
		}
		if !utf8.Valid(line) { // encoding/json would replace the bad bytes silently
			return nil, bad("not valid UTF-8")
		}
		var raw struct {
			ID          json.RawMessage `json:"id"`
			Question    *string         `json:"question"`
			Expected    *string         `json:"expected"`
			Instruction *string         `json:"instruction"`
			Input       *string         `json:"input"`
			Output      *string         `json:"output"`
		}
		if err := json.Unmarshal(line, &raw); err != nil {
			return nil, bad("not a JSON object with string fields: %v", err)
		}
		q := Question{ID: strconv.Itoa(n)}
		if len(raw.ID) > 0 && string(raw.ID) != "null" {
			var s string
			if json.Unmarshal(raw.ID, &s) != nil {
				var num json.Number
				if json.Unmarshal(raw.ID, &num) != nil {
					return nil, bad(`"id" must be a string or a number`)
				}
				s = num.String()
			}
			q.ID = s
		}
		switch {
		case raw.Question != nil && raw.Expected != nil:
			q.Question, q.Expected = *raw.Question, *raw.Expected
		case raw.Instruction != nil && raw.Output != nil:
			q.Question, q.Expected = *raw.Instruction, *raw.Output
			if raw.Input != nil && strings.TrimSpace(*raw.Input) != "" {
				q.Question += "\n\n" + *raw.Input
			}
		default:
			return nil, bad(`want "question" and "expected", or Alpaca's "instruction" and "output"`)
		}
		if strings.TrimSpace(q.Question) == "" {
			return nil, bad("the question is empty")
		}
		if strings.TrimSpace(q.Expected) == "" {
			return nil, bad("the expected answer is empty")
		}
		if prev, dup := seen[q.ID]; dup {
			return nil, bad("id %q already used on line %d", q.ID, prev)
		}
		seen[q.ID] = n
		qs = append(qs, q)
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		return nil, fmt.Errorf("%s: line %d: longer than %d MiB", name, n, maxQuestionLine>>20)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("%s: no questions", name)
	}
	return qs, nil
}
