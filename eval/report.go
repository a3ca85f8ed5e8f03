package eval

import (
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// writeReports writes summary.json, report.md and report.html into out.
func writeReports(out string, s *Summary) error {
	if err := writeJSON(filepath.Join(out, "summary.json"), s); err != nil {
		return err
	}
	if err := writeText(filepath.Join(out, "report.md"), Markdown(s)); err != nil {
		return err
	}
	return writeText(filepath.Join(out, "report.html"), HTML(s))
}

func writeText(path, text string) error {
	return tensor.ReplaceFile(path, func(f *os.File) error {
		_, err := f.WriteString(text)
		return err
	})
}

// primary is the metric that groups questions in the reports, as the seed did.
const primary = MetricKeyword

// groups splits questions by the first adapter's verdict on the primary metric.
func groups(s *Summary) (titles []string, rows [][]QuestionRow) {
	if len(s.Variants) < 2 {
		return []string{"Answers"}, [][]QuestionRow{s.PerQuestion}
	}
	v := s.Variants[1]
	titles = []string{"Fine-tuned (" + v + ") better", "Base better", "Similar"}
	rows = make([][]QuestionRow, 3)
	for _, r := range s.PerQuestion {
		switch r.Verdicts[v][primary] {
		case VariantBetter:
			rows[0] = append(rows[0], r)
		case BaseBetter:
			rows[1] = append(rows[1], r)
		default:
			rows[2] = append(rows[2], r)
		}
	}
	return titles, rows
}

// Decoding says in words what decoding ran: greedy or sampling, and the
// transforms that changed the logits (as the sampler applies them).
func Decoding(s qwen.Sampling) string {
	d := "greedy decoding"
	if s.Temperature > 0 {
		d = fmt.Sprintf("sampling at temperature %g", s.Temperature)
		if s.TopK > 0 {
			d += fmt.Sprintf(", top-k %d", s.TopK)
		}
		if s.TopP > 0 && s.TopP < 1 {
			d += fmt.Sprintf(", top-p %g", s.TopP)
		}
	}
	if s.RepetitionPenalty > 0 && s.RepetitionPenalty != 1 {
		d += fmt.Sprintf(", repetition penalty %g", s.RepetitionPenalty)
	}
	return d
}

// Markdown renders report.md in the seed report's structure.
func Markdown(s *Summary) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	set := s.Repro.Settings
	p("# Fine-tune evaluation report\n\n## Overview\n\n")
	decoding := Decoding(set.Sampling)
	p("%d questions answered by %d variants (%s) with %s; every answer scored against the expected answer. ", s.Questions, len(s.Variants), strings.Join(s.Variants, ", "), decoding)
	p("Questions are grouped by the verdict on **%s**, the seed report's metric.\n\n", primary)
	p("## Model details\n\n")
	p("- Base model: `%s` (%d layers, hidden %d, vocab %d), quantisation **%s**\n", set.Model, s.Repro.Model.Layers, s.Repro.Model.Hidden, s.Repro.Model.Vocab, s.Repro.Model.Quant)
	for _, a := range set.Adapters {
		p("- Adapter `%s`: `%s`, LoRA r=%d, alpha=%g (ranks %v), targets %s\n", a.Name, a.Dir, a.Rank, a.Alpha, a.Ranks, strings.Join(a.Target, ", "))
	}
	p("- Decoding: %s, at most %d new tokens, sampler seed %d (settings from the flags, else generation_config.json)\n\n",
		Decoding(set.Sampling), set.MaxNewTokens, set.Sampling.Seed)
	p("## Results summary\n\n")
	for _, c := range s.Comparisons {
		if c.Metric != primary {
			continue
		}
		p("On %s, %s against base:\n\n", c.Metric, c.Variant)
		p("- Fine-tuned better: %s\n- Base better: %s\n- Similar: %s\n\n", frac(c.Better, c.N), frac(c.Worse, c.N), frac(c.Similar, c.N))
	}
	p("| metric | ")
	for _, v := range s.Variants {
		p("mean %s | ", v)
	}
	p("\n|---|")
	for range s.Variants {
		p("---|")
	}
	p("\n")
	for _, m := range s.Metrics {
		p("| %s | ", m)
		for _, v := range s.Variants {
			p("%.4f | ", s.Means[v][m])
		}
		p("\n")
	}
	p("\n## Per-question results\n\n")
	titles, rows := groups(s)
	for i, t := range titles {
		p("### %s (%d)\n\n", t, len(rows[i]))
		for _, r := range rows[i] {
			p("#### %s: %s\n\n", r.ID, oneLine(r.Question))
			p("**Expected:** %s\n\n", oneLine(r.Expected))
			for _, v := range s.Variants {
				p("**%s** (%s %.3f, log-lik %.3f): %s\n\n", v, primary, r.Scores[v][primary], r.Scores[v][MetricLogLik], oneLine(r.Answers[v]))
			}
		}
	}
	p("## Aggregate statistics\n\n")
	p("Verdicts count a question as similar when |difference| ≤ %g. Sign test: exact, two-sided, on the decided questions. Interval: paired bootstrap of the mean difference, %d resamples, 95%% percentile.\n\n", s.Repro.Tie, bootstrapResamples)
	p("| variant | metric | better | worse | similar | mean Δ | sign p | 95%% CI of Δ |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range s.Comparisons {
		p("| %s | %s | %d | %d | %d | %+.4f | %.3g | [%+.4f, %+.4f] |\n", c.Variant, c.Metric, c.Better, c.Worse, c.Similar, c.MeanDiff, c.SignP, c.CILow, c.CIHigh)
	}
	p("\nMetrics:\n\n")
	for _, m := range s.Metrics {
		p("- `%s`: %s\n", m, s.MetricDoc[m])
	}
	p("\n## Analysis\n\n")
	for _, a := range s.Analysis {
		p("- %s\n", a)
	}
	p("\n## Reproducibility\n\n```json\n%s\n```\n", reproJSON(s))
	return b.String()
}

func reproJSON(s *Summary) string {
	b, _ := json.MarshalIndent(s.Repro, "", "  ")
	return string(b)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// highlight escapes text for HTML and marks the words that belong to W(expected).
func highlight(text string, keywords map[string]bool) string {
	var b strings.Builder
	word := func(r rune) bool { return unicode.IsLetter(r) || unicode.IsNumber(r) }
	rs := []rune(text)
	for i := 0; i < len(rs); {
		j := i
		for j < len(rs) && word(rs[j]) == word(rs[i]) {
			j++
		}
		seg := string(rs[i:j])
		if word(rs[i]) && keywords[strings.ToLower(seg)] {
			b.WriteString("<mark>" + html.EscapeString(seg) + "</mark>")
		} else {
			b.WriteString(html.EscapeString(seg))
		}
		i = j
	}
	return b.String()
}

// HTML renders report.html: one self-contained page (no network).
func HTML(s *Summary) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	e := html.EscapeString
	p(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>qbench eval</title><style>
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3;cursor:pointer}td.l,th.l{text-align:left}.pos{color:#075}.neg{color:#a21}
.q{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.5em 1em}.answers{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:1em}
.answers div{background:#fafafa;padding:.5em;border-radius:4px;white-space:pre-wrap;overflow-wrap:anywhere}mark{background:#fe6}pre{background:#f6f6f6;padding:1em;overflow:auto}
</style></head><body>`)
	p("<h1>Fine-tune evaluation</h1><p>%d questions × %d variants (%s). Model <code>%s</code>, quantisation %s. Words of the expected answer are <mark>highlighted</mark> in each answer.</p>",
		s.Questions, len(s.Variants), e(strings.Join(s.Variants, ", ")), e(s.Repro.Settings.Model), e(s.Repro.Model.Quant))
	p("<h2>Summary</h2><table><tr><th class=l>variant</th><th class=l>metric</th><th>better</th><th>worse</th><th>similar</th><th>mean base</th><th>mean variant</th><th>Δ mean</th><th>sign p</th><th>95%% CI of Δ</th></tr>")
	for _, c := range s.Comparisons {
		p("<tr><td class=l>%s</td><td class=l>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%.4f</td><td>%.4f</td><td class=%s>%+.4f</td><td>%.3g</td><td>[%+.4f, %+.4f]</td></tr>",
			e(c.Variant), c.Metric, frac(c.Better, c.N), frac(c.Worse, c.N), frac(c.Similar, c.N), c.MeanBase, c.MeanVariant, sign(c.MeanDiff), c.MeanDiff, c.SignP, c.CILow, c.CIHigh)
	}
	p("</table><ul>")
	for _, a := range s.Analysis {
		p("<li>%s</li>", e(a))
	}
	p("</ul><h2>Metric means</h2>%s", meansChart(s))
	if len(s.Variants) > 1 {
		for _, m := range []string{primary, MetricLogLik} {
			p("<h2>Per-question difference: %s (%s − base)</h2>%s", m, e(s.Variants[1]), diffChart(s, s.Variants[1], m))
		}
	}
	// Sortable per-question table.
	p(`<h2>Per question</h2><p>Click a column to sort.</p><table id=pq><thead><tr><th class=l>id</th>`)
	for _, m := range []string{primary, MetricF1, MetricRougeL, MetricLogLik} {
		for _, v := range s.Variants {
			p("<th>%s<br>%s</th>", m, e(v))
		}
	}
	p("</tr></thead><tbody>")
	for _, r := range s.PerQuestion {
		p("<tr><td class=l><a href='#q-%s'>%s</a></td>", e(r.ID), e(r.ID))
		for _, m := range []string{primary, MetricF1, MetricRougeL, MetricLogLik} {
			for _, v := range s.Variants {
				p("<td>%.4f</td>", r.Scores[v][m])
			}
		}
		p("</tr>")
	}
	p("</tbody></table><h2>Answers</h2>")
	for _, r := range s.PerQuestion {
		kw := Words(r.Expected)
		p("<div class=q id='q-%s'><h3>%s: %s</h3><p><b>Expected:</b> %s</p><div class=answers>", e(r.ID), e(r.ID), e(r.Question), e(r.Expected))
		for _, v := range s.Variants {
			verdict := ""
			if v != "base" {
				verdict = " — " + r.Verdicts[v][primary]
			}
			p("<div><b>%s</b> (%s %.3f%s)<br>%s</div>", e(v), primary, r.Scores[v][primary], e(verdict), highlight(r.Answers[v], kw))
		}
		p("</div></div>")
	}
	p("<h2>Metrics</h2><ul>")
	for _, m := range s.Metrics {
		p("<li><code>%s</code>: %s</li>", m, e(s.MetricDoc[m]))
	}
	p("</ul><h2>Reproducibility</h2><pre>%s</pre>", e(reproJSON(s)))
	p(`<script>
document.querySelectorAll('#pq th').forEach((th, col) => {
  let asc = false;
  th.addEventListener('click', () => {
    const body = document.querySelector('#pq tbody');
    const rows = Array.from(body.rows);
    asc = !asc;
    rows.sort((a, b) => {
      const x = a.cells[col].textContent, y = b.cells[col].textContent;
      const nx = parseFloat(x), ny = parseFloat(y);
      const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y, undefined, {numeric: true}) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
</script></body></html>
`)
	return b.String()
}

func sign(x float64) string {
	if x > 0 {
		return "pos"
	} else if x < 0 {
		return "neg"
	}
	return ""
}

// diffChart is an SVG bar chart of variant − base per question.
func diffChart(s *Summary, v, m string) string {
	n := len(s.PerQuestion)
	const w, h, pad = 720.0, 220.0, 30.0
	maxAbs := 1e-9
	for _, r := range s.PerQuestion {
		d := r.Scores[v][m] - r.Scores["base"][m]
		maxAbs = max(maxAbs, abs(d))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%g" height="%g" role="img" aria-label="per-question differences"><line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#888"/>`, w, h, pad, h/2, w, h/2)
	bw := (w - pad) / float64(max(n, 1))
	for i, r := range s.PerQuestion {
		d := r.Scores[v][m] - r.Scores["base"][m]
		bh := abs(d) / maxAbs * (h/2 - pad)
		y := h / 2
		color := "#2a7"
		if d < 0 {
			color = "#c43"
		} else {
			y -= bh
		}
		x := pad + float64(i)*bw
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %+.4f</title></rect>`, x+2, y, bw-4, bh, color, html.EscapeString(r.ID), d)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="10" text-anchor="middle">%s</text>`, x+bw/2, h-4, html.EscapeString(r.ID))
	}
	fmt.Fprintf(&b, `<text x="2" y="12" font-size="10">+%.3g</text><text x="2" y="%g" font-size="10">−%.3g</text></svg>`, maxAbs, h-pad+10, maxAbs)
	return b.String()
}

// meansChart is an SVG grouped bar chart of each metric's mean per variant
// (log-likelihood, negative, is drawn as exp(mean), the geometric-mean probability).
func meansChart(s *Summary) string {
	colors := []string{"#888", "#27a", "#e82", "#6a3", "#a3a"}
	const h, pad, gw = 200.0, 20.0, 130.0
	var b strings.Builder
	w := pad + gw*float64(len(s.Metrics))
	fmt.Fprintf(&b, `<svg width="%g" height="%g" role="img" aria-label="metric means">`, w, h+30)
	for mi, m := range s.Metrics {
		bw := (gw - 20) / float64(len(s.Variants))
		for vi, v := range s.Variants {
			val := s.Means[v][m]
			if m == MetricLogLik {
				val = math.Exp(val)
			}
			bh := clamp01(val) * (h - pad)
			x := pad + float64(mi)*gw + float64(vi)*bw
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.4f</title></rect>`, x, h-bh, bw-2, bh, colors[vi%len(colors)], html.EscapeString(v), m, s.Means[v][m])
		}
		label := m
		if m == MetricLogLik {
			label = "exp(ref_loglik)"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="10">%s</text>`, pad+float64(mi)*gw, h+14, label)
	}
	for vi, v := range s.Variants {
		fmt.Fprintf(&b, `<rect x="%d" y="%g" width="10" height="10" fill="%s"/><text x="%d" y="%g" font-size="10">%s</text>`, 20+vi*120, h+18, colors[vi%len(colors)], 34+vi*120, h+27, html.EscapeString(v))
	}
	b.WriteString("</svg>")
	return b.String()
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func clamp01(x float64) float64 { return min(max(x, 0), 1) }
