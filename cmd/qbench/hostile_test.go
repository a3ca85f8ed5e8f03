package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbench/qbench/tensor"
)

// TestHostileInputs: careless and hostile inputs end fast with a non-zero
// exit and one line "qbench: <command>: …" naming the file or flag.
func TestHostileInputs(t *testing.T) {
	dir := t.TempDir()
	longLine := filepath.Join(dir, "long.jsonl")
	os.WriteFile(longLine, []byte(`{"question":"`+strings.Repeat("a", 17<<20)+`","expected":"b"}`+"\n"), 0o644)
	badUTF8 := filepath.Join(dir, "utf8.jsonl")
	os.WriteFile(badUTF8, []byte("{\"question\":\"ok\",\"expected\":\"ok\"}\n{\"question\":\"\xff\xfe\",\"expected\":\"x\"}\n"), 0o644)
	fifoModel := filepath.Join(dir, "fifo-model")
	os.Mkdir(fifoModel, 0o755)
	for _, f := range []string{"config.json", "generation_config.json"} {
		b, _ := os.ReadFile(filepath.Join(tiny, f))
		os.WriteFile(filepath.Join(fifoModel, f), b, 0o644)
	}
	if err := syscall.Mkfifo(filepath.Join(fifoModel, "model.safetensors"), 0o644); err != nil {
		t.Fatal(err)
	}
	copyModel := filepath.Join(dir, "copy")
	os.Mkdir(copyModel, 0o755)
	for _, f := range []string{"config.json", "generation_config.json", "model.safetensors"} {
		b, _ := os.ReadFile(filepath.Join(tiny, f))
		os.WriteFile(filepath.Join(copyModel, f), b, 0o644)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"generate", "--model", tiny, "--tokens", "1,2", "--max-new-tokens", "2000000000"}, "max_position_embeddings"},
		{[]string{"generate", "--model", tiny, "--tokens", "1,2", "--max-new-tokens", "9223372036854775807"}, "max_position_embeddings"},
		{[]string{"generate", "--model", tiny, "--tokens", "1,2", "--temperature", "NaN"}, "--temperature NaN"},
		{[]string{"generate", "--model", tiny, "--tokens", "1,2", "--top-p", "-3"}, "--top-p"},
		{[]string{"eval", "--model", tiny, "--tie", "NaN", "--out", filepath.Join(dir, "o1")}, "--tie"},
		{[]string{"eval", "--model", tiny, "--questions", longLine, "--out", filepath.Join(dir, "o2")}, "line 1: longer than 16 MiB"},
		{[]string{"eval", "--model", tiny, "--questions", badUTF8, "--out", filepath.Join(dir, "o3")}, "line 2: not valid UTF-8"},
		{[]string{"eval", "--model", tiny, "--out", "/proc/version/x"}, "/proc/version/x"},
		{[]string{"logits", "--model", tiny, "--tokens", "1,2", "--top", "-5"}, "--top -5"},
		{[]string{"logits", "--model", fifoModel, "--tokens", "1,2"}, "not a regular file"},
		{[]string{"quantize", "--model", copyModel, "--out", copyModel + "/."}, "the model directory itself"},
		{[]string{"tokenize", "--tokenizer", tiny, "\xff"}, "not valid UTF-8"},
	} {
		start := time.Now()
		_, errs, code := qbench(t, "", c.args...)
		d := time.Since(start)
		if code == 0 || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "qbench: "+c.args[0]+": ") || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want one line with %q", c.args, code, errs, c.want)
		}
		if d > 10*time.Second {
			t.Errorf("%v: took %v", c.args, d)
		}
	}
	if _, err := os.Stat(filepath.Join(copyModel, "model.safetensors")); err != nil {
		t.Errorf("quantize onto its source destroyed it: %v", err)
	}
	// Files are written 0644 less the umask, not 0600.
	out := filepath.Join(dir, "w.safetensors")
	if err := tensor.Write(out, []*tensor.Tensor{{Name: "x", DType: tensor.F32, Shape: []int{1}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0)
	syscall.Umask(old)
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o644&^os.FileMode(old) {
		t.Errorf("written %v, want %v", st.Mode().Perm(), 0o644&^os.FileMode(old))
	}
}
