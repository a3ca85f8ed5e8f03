package tokenizer

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ardanlabs/jinja"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ErrNoChatTemplate is returned when the model ships no chat_template.
var ErrNoChatTemplate = errors.New("the model ships no chat_template (tokenizer_config.json or chat_template.jinja)")

// A chat template is code from the model's files, so its rendering is
// bounded: recursive macros are refused before rendering (the Jinja engine
// has no depth limit, and a Go stack overflow cannot be recovered), a panic
// inside the engine becomes an error, and a render that runs past
// templateTime or writes more than templateBytes fails. Real templates
// render in microseconds to a few kilobytes.
const (
	templateTime  = 2 * time.Second
	templateBytes = 16 << 20
)

// ApplyChatTemplate renders messages with the model's own chat_template, as
// transformers' apply_chat_template does; with addGenerationPrompt the
// assistant's turn is opened. A template that supplies a default system
// prompt does so when messages has none. Errors name the template's file.
func (t *Tokenizer) ApplyChatTemplate(messages []Message, addGenerationPrompt bool) (string, error) {
	if t.ChatTemplate == "" {
		return "", fmt.Errorf("%s: %w", t.Path, ErrNoChatTemplate)
	}
	t.tmplOnce.Do(func() {
		if err := checkMacros(t.ChatTemplate); err != nil {
			t.tmplErr = err
			return
		}
		t.tmpl, t.tmplErr = jinja.Compile(t.ChatTemplate)
	})
	if t.tmplErr != nil {
		return "", fmt.Errorf("%s: chat_template: %v", t.TemplatePath, t.tmplErr)
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	data := map[string]any{
		"messages":              msgs,
		"add_generation_prompt": addGenerationPrompt,
		"eos_token":             t.EOS,
		"bos_token":             "",
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() { // abandoned (and ended with the process) if it outlives templateTime
		defer func() {
			if r := recover(); r != nil {
				done <- result{err: fmt.Errorf("rendering failed: %v", r)}
			}
		}()
		out, err := t.tmpl.Render(data)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return "", fmt.Errorf("%s: chat_template: %v", t.TemplatePath, r.err)
		}
		if len(r.out) > templateBytes {
			return "", fmt.Errorf("%s: chat_template: rendered %d bytes, more than the %d a prompt may have", t.TemplatePath, len(r.out), templateBytes)
		}
		return r.out, nil
	case <-time.After(templateTime):
		return "", fmt.Errorf("%s: chat_template: rendering took over %v (a loop that does not end?)", t.TemplatePath, templateTime)
	}
}

var (
	macroDef  = regexp.MustCompile(`\{%-?\s*macro\s+([A-Za-z_][A-Za-z0-9_]*)`)
	macroEnd  = regexp.MustCompile(`\{%-?\s*endmacro\b`)
	identCall = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*\(`)
)

// checkMacros refuses templates whose macros call themselves, directly or
// through others (a conservative reading of the source: a macro's body is
// the text up to its endmacro, a call is its name followed by "(").
func checkMacros(src string) error {
	bodies := map[string]string{}
	for _, m := range macroDef.FindAllStringSubmatchIndex(src, -1) {
		name := src[m[2]:m[3]]
		rest := src[m[1]:]
		end := len(rest)
		if e := macroEnd.FindStringIndex(rest); e != nil {
			end = e[0]
		}
		bodies[name] = rest[:end]
	}
	calls := map[string][]string{}
	for name, body := range bodies {
		for _, c := range identCall.FindAllStringSubmatch(body, -1) {
			if _, ok := bodies[c[1]]; ok {
				calls[name] = append(calls[name], c[1])
			}
		}
	}
	const (
		unseen = iota
		active
		finished
	)
	state := map[string]int{}
	var visit func(string) error
	visit = func(n string) error {
		state[n] = active
		for _, c := range calls[n] {
			switch state[c] {
			case active:
				return fmt.Errorf("macro %s calls itself (through %s): recursion is not supported", c, n)
			case unseen:
				if err := visit(c); err != nil {
					return err
				}
			}
		}
		state[n] = finished
		return nil
	}
	for n := range bodies {
		if state[n] == unseen {
			if err := visit(n); err != nil {
				return err
			}
		}
	}
	return nil
}
