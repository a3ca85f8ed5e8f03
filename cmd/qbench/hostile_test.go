package main

import (
	"fmt"
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

// TestShardedEvalCommand: eval --shard auto takes its index from a Slurm
// array job's variables, auto/N from a Kubernetes Indexed Job's, and merge
// combines the shards.
func TestShardedEvalCommand(t *testing.T) {
	dir := t.TempDir()
	qf := filepath.Join(dir, "q.jsonl")
	os.WriteFile(qf, []byte(`{"question":"What is NF4?","expected":"A 4-bit data type."}
{"question":"What is LoRA?","expected":"Low-rank adaptation."}
{"question":"What is a GPU?","expected":"A graphics processor."}
`), 0o644)
	args := func(out, shard string) []string {
		return []string{"eval", "--model", tiny, "--questions", qf, "--max-new-tokens", "3", "--quiet", "--out", out, "--shard", shard}
	}
	t.Setenv("SLURM_ARRAY_TASK_MIN", "10")
	t.Setenv("SLURM_ARRAY_TASK_COUNT", "2")
	var dirs []string
	for i := 0; i < 2; i++ {
		t.Setenv("SLURM_ARRAY_TASK_ID", fmt.Sprint(10+i))
		d := filepath.Join(dir, fmt.Sprintf("slurm-%d", i))
		if _, errs, code := qbench(t, "", args(d, "auto")...); code != 0 {
			t.Fatalf("shard %d: exit %d: %s", i, code, errs)
		}
		b, _ := os.ReadFile(filepath.Join(d, "settings.json"))
		if !strings.Contains(string(b), fmt.Sprintf(`"shard": "%d/2"`, i)) {
			t.Fatalf("shard %d: settings %s", i, b)
		}
		dirs = append(dirs, d)
	}
	t.Setenv("JOB_COMPLETION_INDEX", "4")
	k8s := filepath.Join(dir, "k8s")
	if _, errs, code := qbench(t, "", args(k8s, "auto/5")...); code != 0 {
		t.Fatalf("k8s shard: exit %d: %s", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(k8s, "results.jsonl")); len(b) != 0 { // shard 4 of 5 of three questions: none
		t.Errorf("shard 4/5 answered %s", b)
	}
	out := filepath.Join(dir, "merged")
	if _, errs, code := qbench(t, "", append([]string{"merge", "--out", out}, dirs...)...); code != 0 {
		t.Fatalf("merge: exit %d: %s", code, errs)
	}
	b, _ := os.ReadFile(filepath.Join(out, "results.jsonl"))
	if n := strings.Count(string(b), "\n"); n != 3 { // three questions, the base model alone
		t.Errorf("merged %d rows, want 3", n)
	}
	if _, errs, code := qbench(t, "", "merge", "--out", filepath.Join(dir, "m2"), dirs[0]); code == 0 || !strings.Contains(errs, "shard 1 of 2 is missing") {
		t.Errorf("missing shard: exit %d, %s", code, errs)
	}
}

// TestHandOver: this build (no GPU code) runs on a machine without a driver:
// GPU commands hand over to qbench-cuda when a driver is there (same
// arguments), run on the CPU with --device auto when not, and --device cuda
// without a driver fails with one line.
func TestHandOver(t *testing.T) {
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "qbench-cuda"), []byte("#!/bin/sh\necho \"companion: $*\"\n"), 0o755)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("QBENCH_DRIVER", "present")
	out, errs, code := qbench(t, "", "generate", "--model", tiny, "--tokens", "1,2", "--max-new-tokens", "1")
	if code != 0 || strings.TrimSpace(out) != "companion: generate --model "+tiny+" --tokens 1,2 --max-new-tokens 1" {
		t.Errorf("auto with a driver: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if out, _, code := qbench(t, "", "generate", "--model", tiny, "--tokens", "1,2", "--max-new-tokens", "1", "--device", "cpu", "--json"); code != 0 || strings.Contains(out, "companion") {
		t.Errorf("--device cpu went to the companion: %q", out)
	}
	if out, _, _ := qbench(t, "", "inspect", "--model", tiny); strings.Contains(out, "companion") {
		t.Error("inspect went to the companion")
	}
	t.Setenv("QBENCH_DRIVER", "absent")
	if out, _, code := qbench(t, "", "generate", "--model", tiny, "--tokens", "1,2", "--max-new-tokens", "1", "--json"); code != 0 || strings.Contains(out, "companion") {
		t.Errorf("auto without a driver: exit %d, %q", code, out)
	}
	_, errs, code = qbench(t, "", "generate", "--model", tiny, "--tokens", "1,2", "--device", "cuda")
	if code == 0 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "no NVIDIA GPU driver") {
		t.Errorf("--device cuda without a driver: exit %d, %q", code, errs)
	}
	_, errs, code = qbench(t, "", "bench")
	if code == 0 || !strings.Contains(errs, "bench runs on the GPU") {
		t.Errorf("bench without a driver: exit %d, %q", code, errs)
	}
}
