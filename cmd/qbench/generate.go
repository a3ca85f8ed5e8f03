package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tokenizer"
)

const generateDoc = `Continues a prompt. --prompt TEXT is wrapped in the model's chat template
(with --system, or the template's default system prompt) and the answer is
streamed as text; --tokens IDS are used as they are. Temperature 0 is greedy.
Sampling flags left unset take the model's generation_config.json defaults
(greedy when it does not ask for sampling). Stops at the eos ids of
generation_config.json unless --no-stop. --json prints
{"tokens":[...],"text":"..."} with the generated ids only.`

// samplingFlags are the decoding flags generate and eval share; unset ones
// (negative) fall back to generation_config.json.
type samplingFlags struct {
	temperature, topP, repPenalty float64
	topK                          int
	seed                          uint64
}

func (s *samplingFlags) register(fsTemp float64, fs interface {
	Float64Var(*float64, string, float64, string)
	IntVar(*int, string, int, string)
	Uint64Var(*uint64, string, uint64, string)
}) {
	fs.Float64Var(&s.temperature, "temperature", fsTemp, "sampling temperature; 0 = greedy (default: generation_config.json)")
	fs.IntVar(&s.topK, "top-k", -1, "keep the K most likely tokens; 0 = off (default: generation_config.json)")
	fs.Float64Var(&s.topP, "top-p", -1, "nucleus sampling mass; 1 = off (default: generation_config.json)")
	fs.Float64Var(&s.repPenalty, "repetition-penalty", -1, "transformers' repetition penalty; 1 = off (default: generation_config.json)")
	fs.Uint64Var(&s.seed, "seed", 0, "random seed for sampling")
}

// check refuses flag values before any work: NaN or infinite numbers, and
// negatives other than -1 (unset: taken from generation_config.json).
func (s *samplingFlags) check() error {
	for _, f := range []struct {
		name string
		v    float64
		max  float64
	}{{"--temperature", s.temperature, math.Inf(1)}, {"--top-p", s.topP, 1}, {"--repetition-penalty", s.repPenalty, math.Inf(1)}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || (f.v < 0 && f.v != -1) || f.v > f.max {
			return fmt.Errorf("%s %v: want a finite number ≥ 0%s", f.name, f.v, map[bool]string{true: " and ≤ 1", false: ""}[f.max == 1])
		}
	}
	if s.repPenalty == 0 {
		return fmt.Errorf("--repetition-penalty 0: want a number > 0 (1 = off)")
	}
	if s.topK < -1 {
		return fmt.Errorf("--top-k %d: want ≥ 0", s.topK)
	}
	return nil
}

// resolve fills unset values from generation_config.json.
func (s *samplingFlags) resolve(g *qwen.GenerationConfig) qwen.Sampling {
	out := qwen.Sampling{Temperature: float32(s.temperature), TopK: s.topK, TopP: float32(s.topP), RepetitionPenalty: float32(s.repPenalty), Seed: s.seed}
	if s.temperature < 0 {
		out.Temperature = 0
		if g.DoSample {
			out.Temperature = g.Temperature
		}
	}
	if s.topK < 0 {
		out.TopK = g.TopK
	}
	if s.topP < 0 {
		out.TopP = g.TopP
	}
	if s.repPenalty < 0 {
		out.RepetitionPenalty = g.RepetitionPenalty
	}
	return out
}

func runGenerate(args []string) error {
	fs := newFlags("generate", "--model DIR (--prompt TEXT | --tokens IDS) [flags]", generateDoc)
	var mf modelFlags
	mf.register(fs, false)
	var sf samplingFlags
	sf.register(-1, fs)
	prompt := fs.String("prompt", "", "user message, sent through the chat template")
	system := fs.String("system", "", "system prompt for --prompt (default: the template's)")
	tokens := fs.String("tokens", "", "comma-separated prompt token `IDS` (no template)")
	maxNew := fs.Int("max-new-tokens", 128, "most tokens to generate")
	noStop := fs.Bool("no-stop", false, "ignore the eos ids")
	asJSON := fs.Bool("json", false, `print {"tokens":[...],"text":"..."} instead of streaming text`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*prompt == "") == (*tokens == "") {
		return fmt.Errorf("give exactly one of --prompt and --tokens")
	}
	if err := sf.check(); err != nil {
		return err
	}
	if *maxNew < 0 {
		return fmt.Errorf("--max-new-tokens %d: must not be negative", *maxNew)
	}
	m, err := mf.load(false)
	if err != nil {
		return err
	}
	tok, tokErr := tokenizer.Load(mf.model)
	var ids []int
	if *prompt != "" {
		if tokErr != nil {
			return tokErr
		}
		var msgs []tokenizer.Message
		if *system != "" {
			msgs = append(msgs, tokenizer.Message{Role: "system", Content: *system})
		}
		text, err := tok.ApplyChatTemplate(append(msgs, tokenizer.Message{Role: "user", Content: *prompt}), true)
		if err != nil {
			return err
		}
		ids = tok.Encode(text)
	} else if ids, err = parseIDs(*tokens); err != nil {
		return err
	}
	e, err := newEngine(m, mf.device, 1)
	if err != nil {
		return err
	}
	s := sf.resolve(m.Gen)
	opt := qwen.GenerateOptions{MaxNewTokens: *maxNew}
	if !*noStop {
		opt.StopIDs = m.Gen.EosIDs
	}
	var stream *tokenizer.Stream
	if !*asJSON && tok != nil {
		stream = tok.NewStream(true)
		opt.OnToken = func(_, id int) { fmt.Print(stream.Add(id)) }
	}
	adapter := -1
	if len(m.Adapters) > 0 {
		adapter = 0
	}
	out, err := qwen.Generate(e, [][]int{ids}, []int{adapter}, []*qwen.Sampler{qwen.NewSampler(s)}, opt)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		res := struct {
			Tokens []int  `json:"tokens"`
			Text   string `json:"text"`
		}{Tokens: out[0]}
		if res.Tokens == nil {
			res.Tokens = []int{}
		}
		if tok != nil {
			res.Text = tok.Decode(out[0], true)
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	case stream != nil:
		fmt.Println(stream.Flush())
	default: // no tokenizer in the model directory: print ids
		fmt.Println(out[0])
	}
	return nil
}
