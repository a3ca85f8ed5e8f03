package tokenizer

import "unicode/utf8"

// Stream decodes tokens one at a time for display: it returns only complete
// UTF-8 characters, holding back the bytes of a character split across tokens.
type Stream struct {
	t           *Tokenizer
	skipSpecial bool
	pending     []byte
}

// NewStream starts a streaming decoder.
func (t *Tokenizer) NewStream(skipSpecial bool) *Stream {
	return &Stream{t: t, skipSpecial: skipSpecial}
}

// Add decodes one more token and returns the text that is now complete.
func (s *Stream) Add(id int) string {
	s.pending = s.t.appendBytes(s.pending, []int{id}, s.skipSpecial)
	// Hold back a trailing sequence that could still become a valid character.
	cut := len(s.pending)
	for i := len(s.pending) - 1; i >= 0 && i >= len(s.pending)-3; i-- {
		if c := s.pending[i]; c < 0x80 || c >= 0xC0 { // the last lead (or ASCII) byte
			if c >= 0xC0 && !utf8.FullRune(s.pending[i:]) && invalidPrefix(s.pending[i:]) == len(s.pending)-i {
				cut = i
			}
			break
		}
	}
	out := lossy(s.pending[:cut])
	s.pending = append(s.pending[:0], s.pending[cut:]...)
	return out
}

// Flush returns whatever is held back, repaired as Decode would.
func (s *Stream) Flush() string {
	out := lossy(s.pending)
	s.pending = s.pending[:0]
	return out
}
