package eval

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
