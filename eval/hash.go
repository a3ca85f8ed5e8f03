package eval

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
)

// Fingerprint hashes a model directory's configuration and tokenizer files
// (the chat template decides the prompts) and, for each safetensors file, its
// header and size: cheap, and it changes whenever the weights' layout or any
// file is replaced. The weights' bytes are hashed separately, in the
// background (Options.ModelSHA256), and checked before results are reused.
func Fingerprint(dir string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"config.json", "generation_config.json", "model.safetensors.index.json",
		"tokenizer_config.json", "tokenizer.json", "tokenizer.json.gz"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			h.Write(b)
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	for _, p := range files {
		if err := hashHeader(h, p); err != nil {
			return "", fmt.Errorf("%s: %v", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashHeader writes a safetensors file's name, size and header into h.
func hashHeader(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	var n [8]byte
	if _, err := io.ReadFull(f, n[:]); err != nil {
		return fmt.Errorf("reading the header length: %v", err)
	}
	fmt.Fprintf(h, "%s %d ", filepath.Base(path), st.Size())
	size := int64(min(uint64(1<<26), binary.LittleEndian.Uint64(n[:])))
	if _, err := io.Copy(h, io.LimitReader(f, size)); err != nil {
		return fmt.Errorf("reading the header: %v", err)
	}
	return nil
}

// HashFiles is the model's content hash: the sha256 of the sha256 digests of
// the given files' 64 MiB chunks, file after file in the order given (a
// missing file is skipped; an empty one is one empty chunk). Chunks, not
// one stream, so that several cores share the work: one stream of a 6 GB
// bf16 checkpoint took ~5 s of sha256 on an H200 host, longer than loading
// and evaluating it. A quarter of the cores, at most 4: with half of 16 the
// hash's reads slowed the load it runs beside (seed evaluation from bf16
// 5.5–5.7 → 6.1–6.5 s). Each worker reads through its own buffer (no
// mapping), so the hash adds no resident memory beyond the buffers.
func HashFiles(paths ...string) (string, error) {
	type chunk struct {
		f      *os.File
		name   string
		off, n int64
	}
	var chunks []chunk
	for _, p := range paths {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return "", err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return "", err
		}
		for off := int64(0); off == 0 || off < st.Size(); off += hashChunk {
			chunks = append(chunks, chunk{f, p, off, min(hashChunk, st.Size()-off)})
		}
	}
	sums := make([][sha256.Size]byte, len(chunks))
	errs := make([]error, len(chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, min(len(chunks), 4, runtime.GOMAXPROCS(0)/4)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := int(next.Add(1) - 1); i < len(chunks); i = int(next.Add(1) - 1) {
				c := chunks[i]
				h := sha256.New()
				if _, err := io.CopyBuffer(h, io.NewSectionReader(c.f, c.off, c.n), buf); err != nil {
					errs[i] = fmt.Errorf("%s: %v", c.name, err)
					continue
				}
				h.Sum(sums[i][:0])
			}
		}()
	}
	wg.Wait()
	top := sha256.New()
	for i := range sums {
		if errs[i] != nil {
			return "", errs[i]
		}
		top.Write(sums[i][:])
	}
	return hex.EncodeToString(top.Sum(nil)), nil
}

// hashChunk is HashFiles' unit of work.
const hashChunk = 64 << 20

// SHA256 is the hex sha256 of b.
func SHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
