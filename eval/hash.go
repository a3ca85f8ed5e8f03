package eval

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
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
// and evaluating it (hashWorkers: the hash's reads also slow the load they
// run beside). Each worker reads through its own buffer (no mapping), so
// the hash adds no resident memory beyond the buffers.
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
	for range max(1, min(len(chunks), hashWorkers())) {
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

// hashWorkers is how many cores HashFiles uses: a quarter, at most 4
// (QBENCH_HASH_WORKERS overrides it, for tuning).
func hashWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("QBENCH_HASH_WORKERS")); err == nil && n > 0 {
		return n
	}
	return max(1, min(4, runtime.GOMAXPROCS(0)/4))
}

// CachedHashFiles is HashFiles, remembered in cacheFile (a JSON map; "" for
// none) under a key made of each file's absolute path, size, modification
// time and inode, so that evaluating the same checkpoint again does not
// read its gigabytes a second time. A cache that cannot be read or written
// only costs the hash.
func CachedHashFiles(cacheFile string, paths ...string) (string, error) {
	key := sha256.New()
	for _, p := range paths {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return "", err
		}
		abs, _ := filepath.Abs(p)
		fmt.Fprintf(key, "%s\x00%d\x00%d\x00%d\x00", abs, st.Size(), st.ModTime().UnixNano(), inode(st))
	}
	k := hex.EncodeToString(key.Sum(nil))
	cache := map[string]string{}
	if cacheFile != "" {
		if b, err := os.ReadFile(cacheFile); err == nil {
			json.Unmarshal(b, &cache) // a damaged cache is an empty one
		}
		if h, ok := cache[k]; ok && len(h) == 2*sha256.Size {
			return h, nil
		}
	}
	h, err := HashFiles(paths...)
	if err != nil || cacheFile == "" {
		return h, err
	}
	cache[k] = h
	if b, err := json.Marshal(cache); err == nil && os.MkdirAll(filepath.Dir(cacheFile), 0o755) == nil {
		tmp := fmt.Sprintf("%s.%d.tmp", cacheFile, os.Getpid())
		if os.WriteFile(tmp, b, 0o644) == nil {
			os.Rename(tmp, cacheFile)
		}
	}
	return h, nil
}

// HashCacheFile is where qbench remembers content hashes: qbench/content-hashes.json
// in the user's cache directory ("" when there is none).
func HashCacheFile() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "qbench", "content-hashes.json")
}

// SHA256 is the hex sha256 of b.
func SHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
