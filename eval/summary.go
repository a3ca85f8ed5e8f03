package eval

import (
	"fmt"
	"math"
	"strings"
)

// Verdicts of a variant against the base on one question and metric.
const (
	VariantBetter = "variant better"
	BaseBetter    = "base better"
	Similar       = "similar"
)

// Summary is everything the reports show.
type Summary struct {
	Questions   int                           `json:"questions"`
	Variants    []string                      `json:"variants"`
	Metrics     []string                      `json:"metrics"`
	MetricDoc   map[string]string             `json:"metric_doc"`
	Means       map[string]map[string]float64 `json:"means"` // variant → metric → mean
	Comparisons []Comparison                  `json:"comparisons"`
	PerQuestion []QuestionRow                 `json:"per_question"`
	Analysis    []string                      `json:"analysis"`
	Repro       Repro                         `json:"reproducibility"`
}

// Comparison is one adapter variant against the base on one metric.
type Comparison struct {
	Variant     string  `json:"variant"`
	Metric      string  `json:"metric"`
	Better      int     `json:"variant_better"`
	Worse       int     `json:"base_better"`
	Similar     int     `json:"similar"`
	N           int     `json:"n"` // questions with a score for both
	MeanBase    float64 `json:"mean_base"`
	MeanVariant float64 `json:"mean_variant"`
	MeanDiff    float64 `json:"mean_difference"`
	SignP       float64 `json:"sign_test_p"`
	CILow       float64 `json:"bootstrap_ci95_low"`
	CIHigh      float64 `json:"bootstrap_ci95_high"`
	Note        string  `json:"note"`
}

// QuestionRow is one question across variants.
type QuestionRow struct {
	ID       string                        `json:"id"`
	Question string                        `json:"question"`
	Expected string                        `json:"expected"`
	Answers  map[string]string             `json:"answers"`
	Scores   map[string]map[string]float64 `json:"scores"`   // variant → metric → score
	Verdicts map[string]map[string]string  `json:"verdicts"` // adapter variant → metric → verdict
}

// Repro is the reproducibility block of every report.
type Repro struct {
	Version     string    `json:"qbench_version"`
	Settings    Settings  `json:"settings"`
	ModelSHA256 string    `json:"model_sha256,omitempty"`
	Model       ModelInfo `json:"model"`
	Device      string    `json:"device"`
	Batch       int       `json:"batch"`
	Tie         float64   `json:"tie"`
	Seed        uint64    `json:"seed"`
	Date        string    `json:"date"`
	WallSeconds float64   `json:"wall_seconds"`
	Variants    []string  `json:"variants"`
}

// ModelInfo is the loaded model's shape, for the reports.
type ModelInfo struct {
	Layers int    `json:"layers"`
	Hidden int    `json:"hidden"`
	Vocab  int    `json:"vocab"`
	Quant  string `json:"quantization"`
}

const bootstrapResamples = 10000

// Summarize computes verdicts, counts, means, sign tests and bootstrap
// intervals. results must hold every (question, variant) pair.
func Summarize(results []Result, qs []Question, variants []string, tie float64, seed uint64) *Summary {
	s := &Summary{Questions: len(qs), Variants: variants, Metrics: Metrics, MetricDoc: MetricDoc, Means: map[string]map[string]float64{}}
	byKey := map[string]Result{}
	for _, r := range results {
		byKey[key(r.ID, r.Variant)] = r
	}
	for _, q := range qs {
		row := QuestionRow{ID: q.ID, Question: q.Question, Expected: q.Expected, Answers: map[string]string{},
			Scores: map[string]map[string]float64{}, Verdicts: map[string]map[string]string{}}
		for _, v := range variants {
			r := byKey[key(q.ID, v)]
			row.Answers[v], row.Scores[v] = r.Answer, r.Metrics
		}
		for _, v := range variants[1:] {
			row.Verdicts[v] = map[string]string{}
			for _, m := range Metrics {
				row.Verdicts[v][m] = verdict(row.Scores[v][m], row.Scores["base"][m], tie)
			}
		}
		s.PerQuestion = append(s.PerQuestion, row)
	}
	for _, v := range variants {
		s.Means[v] = map[string]float64{}
		for _, m := range Metrics {
			var xs []float64
			for _, row := range s.PerQuestion {
				if x := row.Scores[v][m]; !math.IsNaN(x) {
					xs = append(xs, x)
				}
			}
			s.Means[v][m] = Mean(xs)
		}
	}
	for vi, v := range variants[1:] {
		for mi, m := range Metrics {
			c := Comparison{Variant: v, Metric: m}
			var diffs, bs, vs []float64
			for _, row := range s.PerQuestion {
				a, b := row.Scores[v][m], row.Scores["base"][m]
				if math.IsNaN(a) || math.IsNaN(b) {
					continue
				}
				diffs, bs, vs = append(diffs, a-b), append(bs, b), append(vs, a)
				switch row.Verdicts[v][m] {
				case VariantBetter:
					c.Better++
				case BaseBetter:
					c.Worse++
				default:
					c.Similar++
				}
			}
			c.N = len(diffs)
			c.MeanBase, c.MeanVariant, c.MeanDiff = Mean(bs), Mean(vs), Mean(diffs)
			c.SignP = SignTest(c.Better, c.Better+c.Worse)
			c.CILow, c.CIHigh = Bootstrap(diffs, bootstrapResamples, seed+uint64(1000*vi+mi))
			c.Note = note(c)
			s.Comparisons = append(s.Comparisons, c)
		}
	}
	s.Analysis = analysis(s)
	return s
}

func verdict(variant, base, tie float64) string {
	switch d := variant - base; {
	case math.IsNaN(d) || math.Abs(d) <= tie:
		return Similar
	case d > 0:
		return VariantBetter
	default:
		return BaseBetter
	}
}

// note is the plain sentence that says what a comparison can and cannot show.
func note(c Comparison) string {
	decided := c.Better + c.Worse
	switch {
	case c.N == 0:
		return "No question has a score for both variants."
	case MinSignTestP(decided) > 0.05:
		return fmt.Sprintf("With %d decided question(s), no outcome of the sign test could reach p < 0.05: these counts cannot show a difference either way.", decided)
	case c.SignP < 0.05 && (c.CILow > 0 || c.CIHigh < 0):
		dir := "higher"
		if c.MeanDiff < 0 {
			dir = "lower"
		}
		return fmt.Sprintf("The %s scores %s than the base: sign test p = %.3g and the 95%% interval of the mean difference excludes 0.", c.Variant, dir, c.SignP)
	case c.SignP < 0.05 || c.CILow > 0 || c.CIHigh < 0:
		return fmt.Sprintf("Weak evidence of a difference: sign test p = %.3g, 95%% interval [%.3g, %.3g]; the two tests disagree.", c.SignP, c.CILow, c.CIHigh)
	default:
		return fmt.Sprintf("No evidence of a difference: sign test p = %.3g, and the 95%% interval [%.3g, %.3g] includes 0.", c.SignP, c.CILow, c.CIHigh)
	}
}

// analysis writes a few sentences on the whole run.
func analysis(s *Summary) []string {
	var out []string
	for _, c := range s.Comparisons {
		if c.Metric != MetricKeyword && c.Metric != MetricLogLik {
			continue
		}
		out = append(out, fmt.Sprintf("%s vs base on %s: better on %d/%d, worse on %d/%d, similar on %d/%d; mean %+.4g. %s",
			c.Variant, c.Metric, c.Better, c.N, c.Worse, c.N, c.Similar, c.N, c.MeanDiff, c.Note))
	}
	if len(s.Variants) > 1 {
		out = append(out, "The reference log-likelihood involves no sampling and scores every token of the expected answer, so at small n it is the steadiest of these signals; keyword overlap, F1 and ROUGE-L judge one generated answer each.")
	}
	var short []string
	for _, c := range s.Comparisons {
		if c.Metric == MetricExact && c.MeanBase == 0 && c.MeanVariant == 0 {
			short = append(short, c.Variant)
		}
	}
	if len(short) > 0 {
		out = append(out, "No answer matched its expected answer exactly (expected for free-form answers); exact match is shown for completeness.")
	}
	return out
}

// Table renders the per-metric summary in the seed's form, for stdout.
func (s *Summary) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-18s %-14s %-14s %-14s %9s %9s %8s %8s  %s\n", "variant", "metric", "variant better", "base better", "similar", "mean base", "mean var", "Δ mean", "sign p", "95% CI of Δ")
	for _, c := range s.Comparisons {
		fmt.Fprintf(&b, "%-16s %-18s %-14s %-14s %-14s %9.4f %9.4f %+8.4f %8.3g  [%+.4f, %+.4f]\n", c.Variant, c.Metric,
			frac(c.Better, c.N), frac(c.Worse, c.N), frac(c.Similar, c.N), c.MeanBase, c.MeanVariant, c.MeanDiff, c.SignP, c.CILow, c.CIHigh)
	}
	return b.String()
}

func frac(k, n int) string {
	if n == 0 {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d (%.0f%%)", k, n, 100*float64(k)/float64(n))
}
