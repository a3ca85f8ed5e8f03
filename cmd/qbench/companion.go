//go:build !cuda

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// One release that starts anywhere: this build has no GPU code and links no
// CUDA library, so it runs where there is no NVIDIA driver (a login node, a
// CI runner); the GPU build, qbench-cuda (go build -tags cuda), is installed
// beside it. A command that runs on the GPU — --device cuda, or --device auto
// (the default) where a driver and qbench-cuda are present, or bench — is
// handed over to qbench-cuda with the same arguments (the process is
// replaced); everything else runs here.

// gpuCommands run on a device; bench only on the GPU.
var gpuCommands = map[string]bool{"eval": true, "generate": true, "logits": true, "bench": true}

// handOver execs qbench-cuda for a GPU command and returns only on error (or,
// with nothing to hand over, nil).
func handOver(cmd string, args []string) error {
	if !gpuCommands[cmd] {
		return nil
	}
	device := "auto"
scan:
	for i, a := range args {
		switch {
		case a == "--": // the flags end here
			break scan
		case a == "-h" || a == "-help" || a == "--help":
			return nil // help is this build's
		case a == "--device" || a == "-device":
			if i+1 < len(args) {
				device = args[i+1]
			}
		case strings.HasPrefix(a, "--device=") || strings.HasPrefix(a, "-device="):
			device = a[strings.Index(a, "=")+1:]
		}
	}
	if cmd == "bench" && device == "auto" { // bench is the GPU's unless --load --device cpu
		device = "cuda"
	}
	if device != "cuda" && device != "auto" {
		return nil
	}
	companion, cErr := findCompanion()
	driver := driverPresent()
	what := "--device cuda"
	if cmd == "bench" {
		what = "bench runs on the GPU"
	}
	switch {
	case device == "auto" && (cErr != nil || !driver):
		return nil // the CPU, here
	case !driver:
		return fmt.Errorf("%s: no NVIDIA GPU driver on this machine (no loaded kernel module in /proc/driver/nvidia with a libcuda.so.1)", what)
	case cErr != nil:
		return fmt.Errorf("%s: %v", what, cErr)
	}
	return syscall.Exec(companion, append([]string{companion, cmd}, args...), os.Environ())
}

// findCompanion finds qbench-cuda beside this executable, else on the PATH.
func findCompanion() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "qbench-cuda")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("qbench-cuda"); err == nil {
		return p, nil
	}
	return "", errors.New("this qbench has no GPU code and qbench-cuda (its GPU build) is neither beside it nor on the PATH; see the README's install section")
}

// driverPresent reports whether an NVIDIA driver can run CUDA here: its
// loaded kernel module (/proc/driver/nvidia, also visible in GPU containers;
// WSL's /dev/dxg) and its user-space library libcuda.so.1 (a distribution
// can install the library without the module, as Debian's toolkit does; a
// sandbox can show /dev/nvidiactl without a GPU, so that does not count).
func driverPresent() bool {
	switch os.Getenv("QBENCH_DRIVER") { // an override, for tests and setups the checks below miss
	case "present":
		return true
	case "absent":
		return false
	}
	kernel := false
	for _, p := range []string{"/proc/driver/nvidia/version", "/dev/dxg"} {
		if _, err := os.Stat(p); err == nil {
			kernel = true
		}
	}
	if !kernel {
		return false
	}
	if b, err := os.ReadFile("/etc/ld.so.cache"); err == nil && strings.Contains(string(b), "libcuda.so.1") {
		return true
	}
	dirs := filepath.SplitList(os.Getenv("LD_LIBRARY_PATH"))
	dirs = append(dirs, "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
		"/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")
	for _, d := range dirs {
		if d == "" || strings.Contains(d, "stubs") {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "libcuda.so.1")); err == nil {
			return true
		}
	}
	return false
}
