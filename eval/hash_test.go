package eval

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFingerprintErrors: a safetensors file too short to hold its header
// length, or unreadable, is an error naming the file, not a silent hash.
func TestFingerprintErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(bad, []byte{1, 2, 3}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Fingerprint(dir); err == nil || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("truncated file: err = %v, want an error naming it", err)
	}
	// A complete (if empty-headed) file hashes, and the hash follows its header.
	ok := append([]byte{2, 0, 0, 0, 0, 0, 0, 0}, []byte("{}")...)
	if err := os.WriteFile(bad, ok, 0o644); err != nil {
		t.Fatal(err)
	}
	h1, err := Fingerprint(dir)
	if err != nil {
		t.Fatal(err)
	}
	ok[8] = ' '
	os.WriteFile(bad, ok, 0o644)
	if h2, err := Fingerprint(dir); err != nil || h2 == h1 {
		t.Fatalf("changed header: %v, %v (same hash: %v)", h2, err, h2 == h1)
	}
}

// FuzzResume feeds arbitrary settings.json and results.jsonl to resume: an
// error or a set of results, never a panic.
func FuzzResume(f *testing.F) {
	f.Add([]byte(`{"model":"m"}`), []byte(`{"id":"1","variant":"base"}`+"\n"))
	f.Add([]byte(`{`), []byte(``))
	f.Fuzz(func(t *testing.T, settings, results []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, settingsFile), settings, 0o644)
		os.WriteFile(filepath.Join(dir, "results.jsonl"), results, 0o644)
		done, err := resume(Options{Out: dir}, Settings{Model: "m"})
		if err == nil && done == nil {
			t.Fatal("no error and no results map")
		}
	})
}

// TestHashFiles checks the chunked content hash against its definition
// computed here in one pass: files of 0 bytes, of exactly one chunk and of
// a chunk and a bit, with a missing file skipped; and that one changed byte
// in the last chunk changes it.
func TestHashFiles(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
	sizes := []int{0, hashChunk, hashChunk + 12345}
	var paths []string
	top := sha256.New()
	for i, n := range sizes {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		p := filepath.Join(dir, string(rune('a'+i)))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p, filepath.Join(dir, "missing"))
		for off := 0; off == 0 || off < n; off += hashChunk {
			s := sha256.Sum256(b[off:min(n, off+hashChunk)])
			top.Write(s[:])
		}
	}
	got, err := HashFiles(paths...)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(top.Sum(nil)); got != want {
		t.Fatalf("HashFiles = %s, want %s", got, want)
	}
	b, err := os.ReadFile(paths[4])
	if err != nil {
		t.Fatal(err)
	}
	b[hashChunk+100] ^= 0x55
	if err := os.WriteFile(paths[4], b, 0o644); err != nil {
		t.Fatal(err)
	}
	if again, err := HashFiles(paths...); err != nil || again == got {
		t.Fatalf("changed byte: %s, %v (same hash: %v)", again, err, again == got)
	}
}

// TestCachedHashFiles: the second call answers from the cache (shown by
// rewriting the file's bytes but not its size or time: the old hash comes
// back), a new modification time recomputes, and a damaged cache file only
// costs the hash.
func TestCachedHashFiles(t *testing.T) {
	dir := t.TempDir()
	p, cache := filepath.Join(dir, "w.safetensors"), filepath.Join(dir, "cache", "hashes.json")
	if err := os.WriteFile(p, []byte("weights one"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	h1, err := CachedHashFiles(cache, p)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := HashFiles(p); h1 != want {
		t.Fatalf("cached %s, direct %s", h1, want)
	}
	os.WriteFile(p, []byte("weights two"), 0o644)
	os.Chtimes(p, st.ModTime(), st.ModTime())
	if h, err := CachedHashFiles(cache, p); err != nil || h != h1 {
		t.Fatalf("same size and time: %s, %v; want the cached %s", h, err, h1)
	}
	later := st.ModTime().Add(time.Second)
	os.Chtimes(p, later, later)
	h2, err := CachedHashFiles(cache, p)
	if want, _ := HashFiles(p); err != nil || h2 != want || h2 == h1 {
		t.Fatalf("new time: %s, %v; want %s", h2, err, want)
	}
	os.WriteFile(cache, []byte("{not json"), 0o644)
	if h, err := CachedHashFiles(cache, p); err != nil || h != h2 {
		t.Fatalf("damaged cache: %s, %v; want %s", h, err, h2)
	}
}
