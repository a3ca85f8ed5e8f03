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
	"sort"
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

// HashFiles is the sha256 of the concatenated contents of the given files
// (those that exist), in order.
func HashFiles(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SHA256 is the hex sha256 of b.
func SHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
