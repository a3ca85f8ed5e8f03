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
