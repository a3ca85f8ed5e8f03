package tokenizer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// AddedToken is an entry of tokenizer.json's added_tokens.
type AddedToken struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

// Tokenizer encodes text to ids and back.
type Tokenizer struct {
	Path    string
	vocab   map[string]int // BPE vocabulary, in byte-level symbols
	tokens  []string       // id → token text (byte-level symbols, or an added token's content)
	special []bool         // id → is a special added token
	added   []AddedToken   // sorted by descending content length (longest match first)
	isAdded []bool         // id → is an added token
	merges  map[[2]int]merge
	byteTok [256]int // token id of each single byte
	nfc     bool

	mu    sync.Mutex
	cache map[string][]int // BPE result per pre-token

	// ChatTemplate is tokenizer_config.json's chat_template, if found.
	ChatTemplate string
	EOS          string // tokenizer_config.json's eos_token
}

type merge struct{ rank, id int }

// Load reads tokenizer.json (or tokenizer.json.gz) from a file or a model
// directory, and tokenizer_config.json beside it when present.
func Load(path string) (*Tokenizer, error) {
	dir := filepath.Dir(path)
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		dir = path
		path = filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(path); os.IsNotExist(err) {
			path += ".gz"
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		if raw, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
	}
	t, err := Parse(path, raw)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	if b, err := os.ReadFile(cfgPath); err == nil {
		var c struct {
			ChatTemplate json.RawMessage `json:"chat_template"`
			EOS          json.RawMessage `json:"eos_token"`
		}
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("%s: bad JSON: %v", cfgPath, err)
		}
		_ = json.Unmarshal(c.ChatTemplate, &t.ChatTemplate) // a list of named templates is not supported: left empty
		_ = json.Unmarshal(c.EOS, &t.EOS)
	}
	if t.ChatTemplate == "" { // newer transformers save it beside the config
		if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
			t.ChatTemplate = string(b)
		}
	}
	return t, nil
}

type fileJSON struct {
	AddedTokens  []AddedToken    `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        struct {
		Type                    string          `json:"type"`
		Vocab                   map[string]int  `json:"vocab"`
		Merges                  json.RawMessage `json:"merges"`
		ByteFallback            bool            `json:"byte_fallback"`
		ContinuingSubwordPrefix string          `json:"continuing_subword_prefix"`
		EndOfWordSuffix         string          `json:"end_of_word_suffix"`
		IgnoreMerges            bool            `json:"ignore_merges"`
	} `json:"model"`
}

type component struct {
	Type          string          `json:"type"`
	Normalizers   []component     `json:"normalizers"`
	Pretokenizers []component     `json:"pretokenizers"`
	Pattern       json.RawMessage `json:"pattern"`
	Behavior      string          `json:"behavior"`
	Invert        bool            `json:"invert"`
	AddPrefix     bool            `json:"add_prefix_space"`
	UseRegex      bool            `json:"use_regex"`
}

// Parse builds a tokenizer from tokenizer.json bytes; path names it in errors.
// Only what Qwen2 uses is accepted; anything else is an error, not a guess.
func Parse(path string, raw []byte) (*Tokenizer, error) {
	bad := func(format string, a ...any) error { return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, a...)) }
	var f fileJSON
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, bad("bad JSON: %v", err)
	}
	if f.Model.Type != "BPE" {
		return nil, bad("model type %q is not supported (want BPE)", f.Model.Type)
	}
	if f.Model.ByteFallback || f.Model.ContinuingSubwordPrefix != "" || f.Model.EndOfWordSuffix != "" || f.Model.IgnoreMerges {
		return nil, bad("BPE options byte_fallback/continuing_subword_prefix/end_of_word_suffix/ignore_merges are not supported")
	}
	t := &Tokenizer{Path: path, vocab: f.Model.Vocab, cache: map[string][]int{}}
	// Normalizer: none, NFC, or a Sequence of just NFC.
	if len(f.Normalizer) > 0 && string(f.Normalizer) != "null" {
		var n component
		if err := json.Unmarshal(f.Normalizer, &n); err != nil {
			return nil, bad("normalizer: %v", err)
		}
		list := []component{n}
		if n.Type == "Sequence" {
			list = n.Normalizers
		}
		for _, c := range list {
			if c.Type != "NFC" {
				return nil, bad("normalizer %q is not supported (want NFC)", c.Type)
			}
			t.nfc = true
		}
	}
	// Pre-tokenizer: Split(Qwen2 pattern, Isolated) then ByteLevel without its own regex.
	var pt component
	if err := json.Unmarshal(f.PreTokenizer, &pt); err != nil {
		return nil, bad("pre_tokenizer: %v", err)
	}
	if pt.Type != "Sequence" || len(pt.Pretokenizers) != 2 {
		return nil, bad("pre_tokenizer %q is not supported (want Sequence[Split, ByteLevel])", pt.Type)
	}
	split, bl := pt.Pretokenizers[0], pt.Pretokenizers[1]
	var pat struct{ Regex string }
	_ = json.Unmarshal(split.Pattern, &pat)
	if split.Type != "Split" || pat.Regex != Qwen2Pattern || split.Behavior != "Isolated" || split.Invert {
		return nil, bad("pre_tokenizer Split with pattern %q, behavior %q is not supported (want the Qwen2 pattern, Isolated)", pat.Regex, split.Behavior)
	}
	if bl.Type != "ByteLevel" || bl.AddPrefix || bl.UseRegex {
		return nil, bad("pre_tokenizer %q (add_prefix_space %v, use_regex %v) is not supported (want ByteLevel without either)", bl.Type, bl.AddPrefix, bl.UseRegex)
	}
	var dec component
	if err := json.Unmarshal(f.Decoder, &dec); err != nil || dec.Type != "ByteLevel" {
		return nil, bad("decoder is not ByteLevel")
	}
	// Vocabulary and added tokens.
	size := 0
	for _, id := range t.vocab {
		if id < 0 {
			return nil, bad("negative token id %d", id)
		}
		size = max(size, id+1)
	}
	for _, a := range f.AddedTokens {
		if a.ID < 0 || a.Content == "" {
			return nil, bad("added token %d %q is invalid", a.ID, a.Content)
		}
		size = max(size, a.ID+1)
	}
	if size > 1<<24 {
		return nil, bad("vocabulary of %d ids is implausible", size)
	}
	t.tokens, t.special, t.isAdded = make([]string, size), make([]bool, size), make([]bool, size)
	for s, id := range t.vocab {
		t.tokens[id] = s
	}
	for _, a := range f.AddedTokens {
		t.tokens[a.ID], t.special[a.ID], t.isAdded[a.ID] = a.Content, a.Special, true
		t.added = append(t.added, a)
	}
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].Content) > len(t.added[j].Content) })
	for b := 0; b < 256; b++ {
		id, ok := t.vocab[string(byteToRune[b])]
		if !ok {
			return nil, bad("vocabulary lacks the byte-level symbol for byte %#02x", b)
		}
		t.byteTok[b] = id
	}
	// Merges: "a b" strings (older files) or [a, b] pairs (newer).
	var pairs [][2]string
	var strs []string
	if err := json.Unmarshal(f.Model.Merges, &pairs); err != nil {
		if err := json.Unmarshal(f.Model.Merges, &strs); err != nil {
			return nil, bad("merges: want a list of pairs or of strings")
		}
		for _, s := range strs {
			a, b, ok := strings.Cut(s, " ")
			if !ok {
				return nil, bad("merge %q has no space", s)
			}
			pairs = append(pairs, [2]string{a, b})
		}
	}
	t.merges = make(map[[2]int]merge, len(pairs))
	for rank, p := range pairs {
		a, ok1 := t.vocab[p[0]]
		b, ok2 := t.vocab[p[1]]
		c, ok3 := t.vocab[p[0]+p[1]]
		if !ok1 || !ok2 || !ok3 {
			return nil, bad("merge %d (%q %q) uses tokens not in the vocabulary", rank, p[0], p[1])
		}
		if _, dup := t.merges[[2]int{a, b}]; !dup {
			t.merges[[2]int{a, b}] = merge{rank, c}
		}
	}
	return t, nil
}

// VocabSize is one more than the largest id.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token's text (vocabulary or added token).
func (t *Tokenizer) TokenID(s string) (int, bool) {
	for _, a := range t.added {
		if a.Content == s {
			return a.ID, true
		}
	}
	id, ok := t.vocab[s]
	return id, ok
}

// Encode returns the ids of text: added tokens are matched whole in the raw
// text (longest first), the text between them is NFC-normalised, split by the
// Qwen2 pattern and BPE-encoded.
func (t *Tokenizer) Encode(text string) []int {
	var ids []int
	for len(text) > 0 {
		at, tok := t.nextAdded(text)
		t.encodeOrdinary(text[:at], &ids)
		if tok == nil {
			break
		}
		ids = append(ids, tok.ID)
		text = text[at+len(tok.Content):]
	}
	return ids
}

// nextAdded finds the leftmost added token in s (the longest at that place).
func (t *Tokenizer) nextAdded(s string) (int, *AddedToken) {
	best, bestTok := len(s), (*AddedToken)(nil)
	for i := range t.added {
		a := &t.added[i]
		if j := strings.Index(s, a.Content); j >= 0 && j < best { // sorted longest first: a tie keeps the longer
			best, bestTok = j, a
		}
	}
	return best, bestTok
}

func (t *Tokenizer) encodeOrdinary(s string, ids *[]int) {
	if s == "" {
		return
	}
	if t.nfc {
		s = norm.NFC.String(s)
	}
	splitQwen2(s, func(piece string) { *ids = append(*ids, t.bpe(piece)...) })
}

// bpe encodes one pre-token: its bytes become byte-level symbols, then the
// lowest-ranked adjacent pair is merged until no pair has a merge.
func (t *Tokenizer) bpe(piece string) []int {
	t.mu.Lock()
	if ids, ok := t.cache[piece]; ok {
		t.mu.Unlock()
		return ids
	}
	t.mu.Unlock()
	sym := make([]int, len(piece))
	for i := 0; i < len(piece); i++ {
		sym[i] = t.byteTok[piece[i]]
	}
	for len(sym) > 1 {
		best, bestRank := -1, int(^uint(0)>>1)
		var bestID int
		for i := 0; i+1 < len(sym); i++ {
			if m, ok := t.merges[[2]int{sym[i], sym[i+1]}]; ok && m.rank < bestRank {
				best, bestRank, bestID = i, m.rank, m.id
			}
		}
		if best < 0 {
			break
		}
		// Merge every occurrence of the pair, left to right.
		a, b := sym[best], sym[best+1]
		out := sym[:best]
		for i := best; i < len(sym); {
			if i+1 < len(sym) && sym[i] == a && sym[i+1] == b {
				out = append(out, bestID)
				i += 2
			} else {
				out = append(out, sym[i])
				i++
			}
		}
		sym = out
	}
	if len(piece) <= 64 { // long pieces are rare; do not let them grow the cache
		t.mu.Lock()
		if len(t.cache) > 1<<18 {
			clear(t.cache)
		}
		t.cache[piece] = sym
		t.mu.Unlock()
	}
	return sym
}

// Decode turns ids back into text. Byte-level tokens become their bytes,
// added tokens their content (special ones dropped if skipSpecial), and
// invalid UTF-8 is replaced as Rust's String::from_utf8_lossy does.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	return lossy(t.appendBytes(nil, ids, skipSpecial))
}

func (t *Tokenizer) appendBytes(b []byte, ids []int, skipSpecial bool) []byte {
	for _, id := range ids {
		if id < 0 || id >= len(t.tokens) {
			b = append(b, "\uFFFD"...)
			continue
		}
		if t.isAdded[id] {
			if !(skipSpecial && t.special[id]) {
				b = append(b, t.tokens[id]...)
			}
			continue
		}
		for _, r := range t.tokens[id] {
			if int(r) < len(runeToByte) && runeToByte[r] >= 0 {
				b = append(b, byte(runeToByte[r]))
			}
		}
	}
	return b
}

// IsSpecial reports whether id is a special added token.
func (t *Tokenizer) IsSpecial(id int) bool { return id >= 0 && id < len(t.special) && t.special[id] }

// lossy replaces each maximal invalid UTF-8 subsequence with U+FFFD.
func lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, w := utf8.DecodeRune(b)
		if r != utf8.RuneError || w > 1 {
			sb.Write(b[:w])
			b = b[w:]
			continue
		}
		sb.WriteString("\uFFFD")
		b = b[invalidPrefix(b):]
	}
	return sb.String()
}

// invalidPrefix is the length of the maximal prefix of b that starts a valid
// sequence but cannot complete (at least 1): a lead byte and the continuation
// bytes that are still allowed after it.
func invalidPrefix(b []byte) int {
	c := b[0]
	var n int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		n = 2
	case c == 0xE0:
		n, lo = 3, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		n = 3
	case c == 0xED:
		n, hi = 3, 0x9F
	case c == 0xF0:
		n, lo = 4, 0x90
	case c >= 0xF1 && c <= 0xF3:
		n = 4
	case c == 0xF4:
		n, hi = 4, 0x8F
	default:
		return 1
	}
	i := 1
	for ; i < n && i < len(b); i++ {
		if b[i] < lo || b[i] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return i
}

// byteToRune is GPT-2's bytes_to_unicode: printable bytes map to themselves,
// the others to U+0100 onwards, so every byte is a visible symbol.
var byteToRune [256]rune
var runeToByte [512]int

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
	}
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	for b, r := range byteToRune {
		runeToByte[r] = b
	}
}
