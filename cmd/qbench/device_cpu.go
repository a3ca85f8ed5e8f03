//go:build !cuda

package main

import (
	"fmt"

	"github.com/qbench/qbench/qwen"
)

func defaultDevice() string { return "cpu" }

func checkDevice(d string) error {
	switch d {
	case "cpu":
		return nil
	case "cuda":
		return fmt.Errorf("--device cuda: this qbench was built without GPU support (build with -tags cuda)")
	}
	return fmt.Errorf("--device %q: want cpu or cuda", d)
}

// newEngine returns the forward-pass engine for the device (batch matters to
// the GPU engine only).
func newEngine(m *qwen.Model, device string, batch int) (qwen.Engine, error) {
	return qwen.NewRunner(m), nil
}

func runBench(args []string) error {
	fs := newFlags("bench", "[--shape qwen2.5-0.5b|1.5b|3b|7b | --model DIR] [flags]", benchDoc)
	if err := parse(fs, args); err != nil {
		return err
	}
	return fmt.Errorf("bench measures the GPU engine: this qbench was built without GPU support (build with -tags cuda)")
}
