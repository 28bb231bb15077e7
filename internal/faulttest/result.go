package faulttest

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// ResultsEnv names a file the fault tests append their Result rows to (a
// markdown table; the header is written when the file is new or empty).
// Unset: results are only logged.
const ResultsEnv = "EFFECTS_FAULTS_RESULTS"

// Result is what one fault test measured.
type Result struct {
	// Fault is what went wrong ("dispatcher kill -9 with handlers in flight").
	Fault string
	// Injection is how the test made it happen.
	Injection string
	// Sent is the number of effects (rows) the run checked.
	Sent int
	// Lost, CompletedTwice and RunTwice are from the Report.
	Lost, CompletedTwice, RunTwice int
	// RunTwiceAllowed says where the design lets an effect run twice in
	// this fault ("" when it does not).
	RunTwiceAllowed string
	// Heal is the time from the end of the fault (a service or server back,
	// or the last delivery) until every row was final.
	Heal time.Duration
}

// FromReport fills the counts of r from rep.
func (r Result) FromReport(rep Report) Result {
	r.Sent = rep.Sent
	r.Lost = len(rep.Lost)
	r.CompletedTwice = len(rep.CompletedTwice)
	r.RunTwice = len(rep.RunTwice)
	return r
}

// MarkdownHeader is the header of the table Markdown rows belong to.
const MarkdownHeader = "| fault | injection | sent | lost | completed twice | run twice | time to heal |\n" +
	"|---|---|---|---|---|---|---|\n"

// Markdown is r as one row of the table MarkdownHeader starts.
func (r Result) Markdown() string {
	runTwice := fmt.Sprint(r.RunTwice)
	if r.RunTwiceAllowed != "" {
		runTwice += " (" + r.RunTwiceAllowed + ")"
	}
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %s | %s |\n",
		cell(r.Fault), cell(r.Injection), r.Sent, r.Lost, r.CompletedTwice, cell(runTwice), r.Heal.Round(100*time.Millisecond))
}

func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
}

// AppendMarkdown appends r's row to the file at path, writing the header
// first when the file is new or empty. One write per row, so tests in
// several processes may append to one file.
func (r Result) AppendMarkdown(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("faulttest: results: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("faulttest: results: %w", err)
	}
	row := r.Markdown()
	if st.Size() == 0 {
		row = MarkdownHeader + row
	}
	if _, err := f.WriteString(row); err != nil {
		f.Close()
		return fmt.Errorf("faulttest: results: %w", err)
	}
	return f.Close()
}

// Record logs r and, when ResultsEnv names a file, appends it there.
func Record(t testing.TB, r Result) {
	t.Helper()
	t.Logf("result: %s", strings.TrimSpace(r.Markdown()))
	if path := os.Getenv(ResultsEnv); path != "" {
		if err := r.AppendMarkdown(path); err != nil {
			t.Error(err)
		}
	}
}
