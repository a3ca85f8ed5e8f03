// Command qbench runs Qwen2.5 models with NF4 base weights and LoRA adapters,
// and evaluates a fine-tune against its base. Run `qbench help` for commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

type command struct {
	name, args, summary string
	run                 func(args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"eval", "--model DIR [--adapter DIR]...", "answer a Q&A set with the base and each adapter; write reports", runEval},
		{"merge", "--out DIR SHARD_DIR...", "combine the directories of a sharded eval into one report", runMerge},
		{"generate", "--model DIR (--prompt TEXT | --tokens IDS)", "continue a prompt (chat template applied to --prompt)", runGenerate},
		{"logits", "--model DIR --tokens IDS", "print the top logits at every position", runLogits},
		{"tokenize", "--tokenizer PATH [TEXT]", "text or chat messages to token ids (JSON Lines on stdin)", runTokenize},
		{"inspect", "--model DIR [--adapter DIR]", "architecture, parameters, quantisation and adapter of a checkpoint", runInspect},
		{"quantize", "--model DIR --out DIR [--quant nf4|nf4-dq]", "save a bitsandbytes-layout NF4 checkpoint", runQuantize},
		{"bench", "[--shape NAME | --model DIR]", "profile kernels and decoding on the GPU", runBench},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "qbench: Qwen2.5 + NF4 + LoRA inference and evaluation, in Go.")
	fmt.Fprintln(w, "\nUsage: qbench <command> [flags]   (qbench <command> --help for its flags)\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "help" || name == "-h" || name == "--help" {
		usage(os.Stdout)
		return
	}
	for _, c := range commands {
		if c.name == name {
			err := handOver(name, os.Args[2:]) // to the GPU build, when this one has no GPU code
			if err == nil {
				stop := cpuProfile()
				err = c.run(os.Args[2:])
				stop()
			}
			if errors.Is(err, flag.ErrHelp) {
				return
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "qbench: %s: %s\n", name, oneLine(err.Error()))
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "qbench: unknown command %q\n", name)
	usage(os.Stderr)
	os.Exit(2)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// newFlags makes a flag set whose --help prints the command's synopsis and flags.
func newFlags(name, synopsis, doc string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: qbench %s %s\n\n%s\n\nFlags:\n", name, synopsis, strings.TrimSpace(doc))
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, turning a bad flag into a one-line error.
func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(os.Stdout)
		fs.Usage()
		return err
	}
	if err != nil {
		return fmt.Errorf("%v (see qbench %s --help)", err, fs.Name())
	}
	return nil
}

// parseIDs parses "1,2,3".
func parseIDs(s string) ([]int, error) {
	var ids []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("--tokens: %q is not an integer", f)
		}
		ids = append(ids, v)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--tokens: no ids given")
	}
	return ids, nil
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// cpuProfile writes a Go CPU profile of the command to the file named by
// QBENCH_CPUPROFILE, when set (for `go tool pprof`); it returns the stop.
func cpuProfile() func() {
	path := os.Getenv("QBENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "qbench: QBENCH_CPUPROFILE: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
