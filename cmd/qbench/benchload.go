package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"
)

// loadRun is one timed load: reading the checkpoint, binding (and, with
// --quant, quantising) every tensor, and with --device cuda building the GPU
// engine (upload included).
type loadRun struct {
	Cache   string  `json:"cache"` // "cold" or "warm"
	Seconds float64 `json:"seconds"`
	GBs     float64 `json:"checkpoint_gb_per_s"`
	PeakRSS float64 `json:"peak_rss_gb"` // the process's high-water mark during this load
}

// benchLoad times loading the model at --model twice: with its files evicted
// from the page cache first (cold: read from the disk) and again (warm).
func benchLoad(mf *modelFlags, asJSON bool) error {
	if mf.model == "" {
		return fmt.Errorf("--load needs --model DIR")
	}
	files, err := filepath.Glob(filepath.Join(mf.model, "*.safetensors"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("%s: no .safetensors files", mf.model)
	}
	var bytes int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		bytes += st.Size()
	}
	var runs []loadRun
	for _, cache := range []string{"cold", "warm"} {
		if cache == "cold" {
			for _, f := range files {
				if err := evict(f); err != nil {
					return err
				}
			}
		}
		runtime.GC()
		debug.FreeOSMemory()
		resetPeakRSS()
		start := time.Now()
		m, err := mf.load(true)
		if err != nil {
			return err
		}
		eng, err := newEngine(m, mf.device, 1)
		if err != nil {
			return err
		}
		sec := time.Since(start).Seconds()
		runs = append(runs, loadRun{Cache: cache, Seconds: sec, GBs: float64(bytes) / sec / 1e9, PeakRSS: peakRSS()})
		if c, ok := eng.(interface{ Close() }); ok {
			c.Close()
		}
	}
	if asJSON {
		return json.NewEncoder(os.Stdout).Encode(map[string]any{"model": mf.model, "quant": mf.quant, "device": mf.device,
			"checkpoint_bytes": bytes, "runs": runs})
	}
	fmt.Printf("load %s (%.2f GB in %d files, --quant %q, --device %s)\n", mf.model, float64(bytes)/1e9, len(files), mf.quant, mf.device)
	fmt.Printf("%-6s %9s %9s %14s\n", "cache", "seconds", "GB/s", "peak RSS (GB)")
	for _, r := range runs {
		fmt.Printf("%-6s %9.2f %9.2f %14.2f\n", r.Cache, r.Seconds, r.GBs, r.PeakRSS)
	}
	return nil
}
