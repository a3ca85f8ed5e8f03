package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/qbench/qbench/tokenizer"
)

const tokenizeDoc = `Encodes text with a Hugging Face tokenizer.json (a file, or a model
directory). With TEXT arguments, prints their ids as a JSON array. Otherwise
reads JSON Lines on stdin: a line with "text" gets "ids"; a line with
"messages" ([{"role","content"}...]) gets "text" (the model's chat template,
generation prompt added) and "ids". Every input field is echoed; one output
line per input line. A malformed line stops the run with its line number,
unless --keep-going (then it is reported and skipped, and the exit code is 1).`

func runTokenize(args []string) error {
	fs := newFlags("tokenize", "--tokenizer PATH [TEXT...]", tokenizeDoc)
	path := fs.String("tokenizer", "", "tokenizer.json `PATH` or model directory")
	keepGoing := fs.Bool("keep-going", false, "report malformed lines and go on")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("--tokenizer is required")
	}
	tok, err := tokenizer.Load(*path)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if fs.NArg() > 0 {
		text := strings.Join(fs.Args(), " ")
		if !utf8.ValidString(text) {
			return fmt.Errorf("the text is not valid UTF-8")
		}
		fmt.Fprintf(out, "%s\n", marshal(tok.Encode(text)))
		return nil
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(nil, 64<<20)
	bad := 0
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		res, err := tokenizeLine(tok, line)
		if err != nil {
			err = fmt.Errorf("stdin line %d: %v", n, err)
			if !*keepGoing {
				return err
			}
			fmt.Fprintf(os.Stderr, "qbench tokenize: %v\n", err)
			bad++
			continue
		}
		out.Write(res)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin: %v", err)
	}
	if bad > 0 {
		return fmt.Errorf("%d malformed lines skipped", bad)
	}
	return nil
}

func tokenizeLine(tok *tokenizer.Tokenizer, line string) ([]byte, error) {
	if !utf8.ValidString(line) { // the line's other fields are echoed: they must stay valid JSON
		return nil, fmt.Errorf("not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	var text string
	switch {
	case obj["messages"] != nil:
		var msgs []tokenizer.Message
		if err := json.Unmarshal(obj["messages"], &msgs); err != nil {
			return nil, fmt.Errorf(`"messages" is not a list of {"role","content"}: %v`, err)
		}
		var err error
		if text, err = tok.ApplyChatTemplate(msgs, true); err != nil {
			return nil, err
		}
		obj["text"] = marshal(text)
	case obj["text"] != nil:
		if err := json.Unmarshal(obj["text"], &text); err != nil {
			return nil, fmt.Errorf(`"text" is not a string`)
		}
	default:
		return nil, fmt.Errorf(`want a "text" or a "messages" field`)
	}
	obj["ids"] = marshal(tok.Encode(text))
	return marshal(obj), nil
}

// marshal encodes v as compact JSON without escaping <, > and & (chat
// templates are full of them).
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v) // values built here always encode
	return bytes.TrimRight(b.Bytes(), "\n")
}
