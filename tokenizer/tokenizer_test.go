package tokenizer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

const tokDir = "../testdata/qwen2.5-tokenizer"

var (
	loadOnce sync.Once
	shared   *Tokenizer
	loadErr  error
)

func qwen(t testing.TB) *Tokenizer {
	loadOnce.Do(func() { shared, loadErr = Load(tokDir) })
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	return shared
}

func readLines[T any](t *testing.T, path string) []T {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func TestGoldenEncodeDecode(t *testing.T) {
	tok := qwen(t)
	type line struct {
		Text    string `json:"text"`
		IDs     []int  `json:"ids"`
		Decoded string `json:"decoded"`
	}
	lines := readLines[line](t, "../testdata/tokenizer-golden.jsonl")
	if len(lines) != 26 {
		t.Fatalf("%d golden lines, want 26", len(lines))
	}
	for i, l := range lines {
		got := tok.Encode(l.Text)
		if fmt.Sprint(got) != fmt.Sprint(l.IDs) {
			t.Errorf("line %d %q:\n got %v\nwant %v", i+1, l.Text, got, l.IDs)
		}
		if d := tok.Decode(l.IDs, false); d != l.Decoded {
			t.Errorf("line %d: decode = %q, want %q", i+1, d, l.Decoded)
		}
	}
}

func TestGoldenChat(t *testing.T) {
	tok := qwen(t)
	type line struct {
		Messages []Message `json:"messages"`
		Text     string    `json:"text"`
		IDs      []int     `json:"ids"`
	}
	lines := readLines[line](t, "../testdata/chat-golden.jsonl")
	for i, l := range lines {
		text, err := tok.ApplyChatTemplate(l.Messages, true)
		if err != nil {
			t.Fatal(err)
		}
		if text != l.Text {
			t.Errorf("line %d: rendered\n%q\nwant\n%q", i+1, text, l.Text)
		}
		if got := tok.Encode(text); fmt.Sprint(got) != fmt.Sprint(l.IDs) {
			t.Errorf("line %d: ids\n got %v\nwant %v", i+1, got, l.IDs)
		}
	}
}

func TestSplitPieces(t *testing.T) {
	cases := []struct{ in, want string }{
		{"Hello world", "Hello| world"},
		{"I'M here", "I|'M| here"},
		{"a  b", "a| | b"},
		{"x \n\n y", "x| \n\n| y"},
		{"trailing  ", "trailing|  "},
		{"12345", "1|2|3|4|5"},
		{"foo!!\n\nbar", "foo|!!\n\n|bar"},
		{"\tcode", "\tcode"}, // a tab is the optional non-letter prefix of a word
		{"\n\tcode", "\n|\tcode"},
	}
	for _, c := range cases {
		var parts []string
		splitQwen2(c.in, func(s string) { parts = append(parts, s) })
		if got := strings.Join(parts, "|"); got != c.want {
			t.Errorf("split(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestStreamNeverSplitsRunes(t *testing.T) {
	tok := qwen(t)
	text := "Emoji 👩‍👩‍👧 and 中文 and العربية"
	ids := tok.Encode(text)
	st := tok.NewStream(false)
	var sb strings.Builder
	for _, id := range ids {
		piece := st.Add(id)
		if !utf8.ValidString(piece) {
			t.Fatalf("stream emitted invalid UTF-8 %q", piece)
		}
		sb.WriteString(piece)
	}
	sb.WriteString(st.Flush())
	if sb.String() != text {
		t.Errorf("stream = %q, want %q", sb.String(), text)
	}
}

func TestLossyMatchesRust(t *testing.T) {
	cases := []struct{ in, want string }{
		{"a\xffb", "a\uFFFDb"},
		{"\xff\xff", "\uFFFD\uFFFD"},
		{"\xe2\x82", "\uFFFD"},                 // truncated 3-byte sequence: one replacement
		{"\xe2\x82x", "\uFFFDx"},               // ... followed by ASCII
		{"\xf0\x9f\x98", "\uFFFD"},             // truncated emoji
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // surrogate: ED then two bare continuations
	}
	for _, c := range cases {
		if got := lossy([]byte(c.in)); got != c.want {
			t.Errorf("lossy(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestBadTokenizerFiles(t *testing.T) {
	cases := map[string]string{
		`{`:                            "bad JSON",
		`{"model":{"type":"Unigram"}}`: "not supported",
		`{"model":{"type":"BPE","vocab":{}},"pre_tokenizer":{"type":"Whitespace"}}`: "not supported",
	}
	for in, want := range cases {
		if _, err := Parse("tok.json", []byte(in)); err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "tok.json") {
			t.Errorf("Parse(%s): err = %v, want %q", in, err, want)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	tok := qwen(f)
	for _, s := range []string{"Hello, world!", "中文 テスト 한국어", "  \n\t x", "<|im_start|>user\nhi", "1234 it's"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		got := tok.Decode(ids, false)
		if utf8.ValidString(s) && got != norm.NFC.String(s) && !hasAdded(tok, s) {
			t.Fatalf("decode(encode(%q)) = %q", s, got)
		}
	})
}

// hasAdded: text containing an added token is not NFC-normalised across it.
func hasAdded(tok *Tokenizer, s string) bool {
	for _, a := range tok.added {
		if strings.Contains(s, a.Content) {
			return true
		}
	}
	return false
}

func ExampleTokenizer_Encode() {
	tok, _ := Load("../testdata/qwen2.5-tokenizer")
	ids := tok.Encode("Hello, world!")
	fmt.Println(ids, tok.Decode(ids, false))
	// Output: [9707 11 1879 0] Hello, world!
}

// TestBadVocabularies edits the real tokenizer.json: an empty merge list and
// two tokens sharing an id are refused, naming the file.
func TestBadVocabularies(t *testing.T) {
	gz, err := os.ReadFile("../testdata/qwen2.5-tokenizer/tokenizer.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	for name, c := range map[string]struct {
		edit func(model map[string]any)
		want string
	}{
		"empty merges": {func(m map[string]any) { m["merges"] = []any{} }, "merges: the list is empty"},
		"shared id":    {func(m map[string]any) { m["vocab"].(map[string]any)["hello"] = m["vocab"].(map[string]any)["world"] }, "share id"},
	} {
		var doc map[string]any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		c.edit(doc["model"].(map[string]any))
		b, _ := json.Marshal(doc)
		if _, err := Parse("tok.json", b); err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tok.json") {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
	}
}
