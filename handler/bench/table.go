package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// printTable writes the results as one aligned table, then the notes.
func printTable(w io.Writer, rep report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\trequests\treq/s\tp50 ms\tp95 ms\tp99 ms\tmax ms\tpeak RSS MB\tverdict\tARM calls\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Requests, num(r.Throughput),
			num(r.P50ms), num(r.P95ms), num(r.P99ms), num(r.Maxms), num(r.PeakRSSMB), r.Verdict, calls(r.ARMCalls))
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%-13s target: %s\n%-13s %s\n", r.Scenario, r.Target, "", r.Notes)
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// calls renders ARM call counts as "PUT securityRules=100 GET networkSecurityGroups=100".
func calls(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// printTwin writes the two-mode table: one row per scenario and ARM
// latency, local and Functions side by side, the bound beside them; then
// each cell's notes.
func printTwin(w io.Writer, rep report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tARM latency\tlocal\tfunctions\tbound\t")
	text := func(c *cell) string {
		switch {
		case c == nil:
			return "-"
		case c.Azure != "":
			return "would fail in Azure: " + c.Azure + "; " + c.Summary
		case c.Err != "" && c.Summary == "error":
			return "error: " + tail(c.Err, 120)
		}
		return c.Summary
	}
	for _, r := range rep.Twin {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Latency, text(r.Local), text(r.Functions), r.Bound)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rep.Twin {
		for _, m := range []struct {
			mode string
			c    *cell
		}{{"local", r.Local}, {"functions", r.Functions}} {
			if m.c == nil {
				continue
			}
			fmt.Fprintf(w, "%s at %s, %s: %s", r.Scenario, r.Latency, m.mode, m.c.Notes)
			if m.c.Err != "" {
				fmt.Fprintf(w, " (error: %s)", tail(m.c.Err, 300))
			}
			fmt.Fprintln(w)
		}
	}
}

// printTwinMarkdown writes the two-mode table in Markdown, for the README
// and docs/performance.md.
func printTwinMarkdown(w io.Writer, rep report) {
	fmt.Fprintln(w, "| scenario | ARM latency | local | functions | bound |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	text := func(c *cell) string {
		switch {
		case c == nil:
			return "-"
		case c.Azure != "":
			return "**would fail in Azure**: " + c.Azure + "; " + c.Summary
		case c.Err != "" && c.Summary == "error":
			return "error: " + tail(c.Err, 120)
		}
		return c.Summary
	}
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	for _, r := range rep.Twin {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.Scenario, r.Latency, esc(text(r.Local)), esc(text(r.Functions)), esc(r.Bound))
	}
}
