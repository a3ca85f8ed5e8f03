package eval

import (
	"strings"
	"testing"
)

func TestParseQuestions(t *testing.T) {
	in := `{"id":"a","question":"Q1?","expected":"A1"}

{"instruction":"Summarise","input":"some text","output":"short"}
{"question":"Q3","expected":"A3","id":7}
`
	qs, err := ParseQuestions("q.jsonl", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Question{{"a", "Q1?", "A1"}, {"3", "Summarise\n\nsome text", "short"}, {"7", "Q3", "A3"}}
	for i := range want {
		if qs[i] != want[i] {
			t.Errorf("question %d = %+v, want %+v", i, qs[i], want[i])
		}
	}
	for in, wantErr := range map[string]string{
		`{"question":"x"}`: "q.jsonl: line 1: want",
		"{\"question\":\"x\",\"expected\":\"y\"}\nnope":                                                "q.jsonl: line 2: not a JSON object",
		`{"question":"x","expected":"y","id":"1"}` + "\n" + `{"question":"z","expected":"y","id":"1"}`: "line 2: id \"1\" already used on line 1",
		``:                              "no questions",
		`{"question":3,"expected":"y"}`: "line 1",
	} {
		if _, err := ParseQuestions("q.jsonl", strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: err = %v, want %q", in, err, wantErr)
		}
	}
}

func TestSeedQuestions(t *testing.T) {
	qs, _, err := LoadQuestions("")
	if err != nil || len(qs) != 10 || qs[0].ID != "q1" {
		t.Fatalf("seed: %d questions, %v", len(qs), err)
	}
}

func FuzzParseQuestions(f *testing.F) {
	f.Add(`{"question":"q","expected":"e"}`)
	f.Add(`{"instruction":"i","input":"x","output":"o","id":3}`)
	f.Fuzz(func(t *testing.T, s string) {
		qs, err := ParseQuestions("fuzz", strings.NewReader(s))
		if err == nil && len(qs) == 0 {
			t.Fatal("no error and no questions")
		}
	})
}
