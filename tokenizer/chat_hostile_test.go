package tokenizer

import (
	"strings"
	"testing"
	"time"
)

// TestHostileChatTemplates: a template is code from the model's files; the
// bad ones end fast with an error naming tokenizer_config.json.
func TestHostileChatTemplates(t *testing.T) {
	load := func(tmpl string) *Tokenizer {
		tk, err := Load("../testdata/qwen2.5-tokenizer")
		if err != nil {
			t.Fatal(err)
		}
		tk.ChatTemplate = tmpl
		return tk
	}
	for _, c := range []struct{ tmpl, want string }{
		{`{{ 'x' * -1 }}`, "rendering failed"},
		{`{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}`, "macro f calls itself"},
		{`{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}`, "calls itself"},
		// A loop long enough to pass the time limit, short enough to end on its
		// own soon after (an abandoned render runs on until it ends or the
		// process does: the command exits on the error).
		{`{% for i in range(20000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}`, "took over"},
		{`{{ 'x' * 20000000 }}`, "more than the"},
		{`{% if %}`, "chat_template"},
	} {
		tk := load(c.tmpl)
		start := time.Now()
		_, err := tk.ApplyChatTemplate([]Message{{Role: "user", Content: "hi"}}, true)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "tokenizer_config.json") {
			t.Errorf("%s: err = %v, want %q naming tokenizer_config.json", c.tmpl, err, c.want)
		}
		if d := time.Since(start); d > templateTime+time.Second {
			t.Errorf("%s: took %v", c.tmpl, d)
		}
	}
	tk := load(`{% if false %}x{% endif %}`)
	if out, err := tk.ApplyChatTemplate([]Message{{Role: "user", Content: "hi"}}, true); err != nil || out != "" {
		t.Errorf("a template rendering nothing: %q, %v (callers refuse the empty prompt)", out, err)
	}
}

// TestEncodeLinear: long runs (one 200 KB word, 26,000 added tokens in a
// row) encode in time linear in their length, the same ids as in pieces.
func TestEncodeLinear(t *testing.T) {
	tk, err := Load("../testdata/qwen2.5-tokenizer")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, unit string
		reps       int
	}{{"letters", "abcdefghij", 20000}, {"added tokens", "<|im_end|>", 26000}, {"mixed", "<|im_start|>user\\nhello", 10000}} {
		text := strings.Repeat(c.unit, c.reps)
		start := time.Now()
		ids := tk.Encode(text)
		d := time.Since(start)
		if d > 3*time.Second {
			t.Errorf("%s: %d bytes took %v", c.name, len(text), d)
		}
		if got := tk.Decode(ids, false); got != text {
			t.Errorf("%s: round trip lost text (%d bytes back of %d)", c.name, len(got), len(text))
		}
		if c.name != "letters" { // whole units repeat: the ids repeat
			unit := tk.Encode(c.unit)
			if len(ids) != len(unit)*c.reps {
				t.Errorf("%s: %d ids, want %d × %d", c.name, len(ids), len(unit), c.reps)
			}
		}
		t.Logf("%s: %d bytes → %d ids in %v", c.name, len(text), len(ids), d)
	}
}

// FuzzChatTemplate renders arbitrary template sources: an error or a
// bounded result, never a panic or a hang past the time limit.
func FuzzChatTemplate(f *testing.F) {
	for _, s := range []string{`{{ messages[0]['content'] }}`, `{% for m in messages %}{{ m.role }}{% endfor %}`,
		`{% macro f(x) %}{{ x }}{% endmacro %}{{ f(1) }}`, `{{ 'a' * 3 }}`, `{% if add_generation_prompt %}x{% endif %}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tk := &Tokenizer{Path: "fuzz", TemplatePath: "fuzz", ChatTemplate: src}
		start := time.Now()
		out, err := tk.ApplyChatTemplate([]Message{{Role: "user", Content: "hi"}}, true)
		if err == nil && len(out) > templateBytes {
			t.Fatalf("%d bytes accepted", len(out))
		}
		if d := time.Since(start); d > templateTime+time.Second {
			t.Fatalf("took %v", d)
		}
	})
}
