package tokenizer

import (
	"container/heap"
	"github.com/ardanlabs/jinja"

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

	// ChatTemplate is tokenizer_config.json's chat_template (or
	// chat_template.jinja's), if found; TemplatePath names its file.
	ChatTemplate string
	TemplatePath string
	EOS          string // tokenizer_config.json's eos_token

	tmplOnce sync.Once
	tmpl     *jinja.Template
	tmplErr  error
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
		t.TemplatePath = cfgPath
	}
	if t.ChatTemplate == "" { // newer transformers save it beside the config
		p := filepath.Join(dir, "chat_template.jinja")
		if b, err := os.ReadFile(p); err == nil {
			t.ChatTemplate, t.TemplatePath = string(b), p
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
	owner := make([]string, size) // which token holds each id: two would decode one of them wrongly
	for s, id := range t.vocab {
		if owner[id] != "" {
			return nil, bad("tokens %q and %q share id %d", min(s, owner[id]), max(s, owner[id]), id)
		}
		t.tokens[id], owner[id] = s, s
	}
	for _, a := range f.AddedTokens {
		if owner[a.ID] != "" && owner[a.ID] != a.Content {
			return nil, bad("added token %q has id %d, which the vocabulary gives %q", a.Content, a.ID, owner[a.ID])
		}
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
	if len(pairs) == 0 {
		return nil, bad("merges: the list is empty (a byte-level BPE without merges would encode every byte alone)")
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
// text (leftmost, then longest), the text between them is NFC-normalised,
// split by the Qwen2 pattern and BPE-encoded. Each added token's next
// occurrence is remembered until passed, so a text full of them costs time
// linear in its length.
func (t *Tokenizer) Encode(text string) []int {
	var ids []int
	next := make([]int, len(t.added)) // next occurrence at or after pos; −1 none left; −2 not looked for
	for i := range next {
		next[i] = -2
	}
	for pos := 0; pos < len(text); {
		best, bestTok := len(text), -1
		for i := range t.added {
			c := t.added[i].Content
			if next[i] == -1 || c == "" {
				continue
			}
			if next[i] < pos { // not looked for yet, or inside what was just consumed
				j := strings.Index(text[pos:], c)
				if j < 0 {
					next[i] = -1
					continue
				}
				next[i] = pos + j
			}
			if next[i] < best { // sorted longest first: a tie keeps the longer
				best, bestTok = next[i], i
			}
		}
		t.encodeOrdinary(text[pos:best], &ids)
		if bestTok < 0 {
			break
		}
		ids = append(ids, t.added[bestTok].ID)
		pos = best + len(t.added[bestTok].Content)
	}
	return ids
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
// lowest-ranked adjacent pair (the leftmost among equals) is merged, one at a
// time, until no pair has a merge — as the Rust tokenizers' Word::merge_all
// does, with a heap of candidate merges and a linked list of symbols, so a
// long piece costs O(n log n) rather than a rescan per merge.
func (t *Tokenizer) bpe(piece string) []int {
	t.mu.Lock()
	if ids, ok := t.cache[piece]; ok {
		t.mu.Unlock()
		return ids
	}
	t.mu.Unlock()
	n := len(piece)
	if n == 0 {
		return nil
	}
	sym := make([]int, n)  // symbol id at each live position
	next := make([]int, n) // next live position, or -1
	prev := make([]int, n) // previous live position, or -1
	alive := make([]bool, n)
	for i := 0; i < n; i++ {
		sym[i], next[i], prev[i], alive[i] = t.byteTok[piece[i]], i+1, i-1, true
	}
	next[n-1] = -1
	h := &mergeHeap{}
	push := func(pos int) { // the pair starting at live position pos, if it merges
		if pos < 0 || next[pos] < 0 {
			return
		}
		if m, ok := t.merges[[2]int{sym[pos], sym[next[pos]]}]; ok {
			heap.Push(h, pending{m.rank, pos, m.id})
		}
	}
	for i := 0; i+1 < n; i++ {
		push(i)
	}
	for h.Len() > 0 {
		m := heap.Pop(h).(pending)
		r := next[m.pos]
		if !alive[m.pos] || r < 0 {
			continue
		}
		if cur, ok := t.merges[[2]int{sym[m.pos], sym[r]}]; !ok || cur.id != m.id { // the pair changed since it was queued
			continue
		}
		sym[m.pos] = m.id
		alive[r] = false
		next[m.pos] = next[r]
		if next[r] >= 0 {
			prev[next[r]] = m.pos
		}
		push(prev[m.pos])
		push(m.pos)
	}
	out := make([]int, 0, 8)
	for i := 0; i >= 0; i = next[i] {
		out = append(out, sym[i])
	}
	if len(piece) <= 64 { // long pieces are rare; do not let them grow the cache
		t.mu.Lock()
		if len(t.cache) > 1<<18 {
			clear(t.cache)
		}
		t.cache[piece] = out
		t.mu.Unlock()
	}
	return out
}

// pending is a queued merge: the pair starting at pos becomes id.
type pending struct{ rank, pos, id int }

// mergeHeap orders pending merges by rank, then position.
type mergeHeap []pending

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(i, j int) bool {
	return h[i].rank < h[j].rank || (h[i].rank == h[j].rank && h[i].pos < h[j].pos)
}
func (h mergeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(pending)) }
func (h *mergeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
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
