package tokenizer

import (
	"errors"
	"fmt"

	"github.com/ardanlabs/jinja"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ErrNoChatTemplate is returned when the model ships no chat_template.
var ErrNoChatTemplate = errors.New("the model ships no chat_template (tokenizer_config.json or chat_template.jinja)")

// ApplyChatTemplate renders messages with the model's own chat_template, as
// transformers' apply_chat_template does; with addGenerationPrompt the
// assistant's turn is opened. A template that supplies a default system
// prompt does so when messages has none.
func (t *Tokenizer) ApplyChatTemplate(messages []Message, addGenerationPrompt bool) (string, error) {
	if t.ChatTemplate == "" {
		return "", fmt.Errorf("%s: %w", t.Path, ErrNoChatTemplate)
	}
	tmpl, err := jinja.Compile(t.ChatTemplate)
	if err != nil {
		return "", fmt.Errorf("%s: chat_template: %v", t.Path, err)
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	out, err := tmpl.Render(map[string]any{
		"messages":              msgs,
		"add_generation_prompt": addGenerationPrompt,
		"eos_token":             t.EOS,
		"bos_token":             "",
	})
	if err != nil {
		return "", fmt.Errorf("%s: chat_template: %v", t.Path, err)
	}
	return out, nil
}
