package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/workspace"
)

// File names come from the VM: one named with escape sequences cannot
// erase the flagged-path warning, and one with a newline cannot forge a
// line of the summary.
func TestPrintSummariesCleansGuestNames(t *testing.T) {
	erase, forged := "\x1b[1A\x1b[2Kevil", "a\nwarning: forged"
	sums := []workspace.Summary{{
		Machine: "p-1", Branch: "fleet/p-1", Commits: 1,
		Files:   []string{".github/workflows/ci.yml", erase, forged, "bidi\u202etxt.exe", "ok.go"},
		Flagged: []string{".github/workflows/ci.yml", erase},
	}}
	var out bytes.Buffer
	printSummaries(&out, sums)
	got := out.String()
	if strings.ContainsAny(got, "\x1b\r\u202e") {
		t.Fatalf("raw control bytes in the summary:\n%q", got)
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 7 {
		t.Fatalf("want a header, 5 files and the warning, got %d lines:\n%s", len(lines), got)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "warning:") {
			t.Fatalf("a guest name started a line of its own: %q", l)
		}
	}
	if lines[1] != "  ! .github/workflows/ci.yml" || !strings.HasPrefix(lines[2], "  ! ") || !strings.Contains(lines[2], "evil") {
		t.Fatalf("flag marks lost:\n%s", got)
	}
	if lines[6] != "  ! 2 path(s) can run code on the host or in CI: review them before merging" {
		t.Fatalf("the warning is not intact: %q", lines[6])
	}
	// Results folders and machine names go through the same cleaning.
	out.Reset()
	printSummaries(&out, []workspace.Summary{{Machine: "p-2\x1b[2K", Into: "/r/\x1b]0;x\x07"}, {Machine: "p-3\n", Unchanged: true}})
	if strings.ContainsAny(out.String(), "\x1b\x07") || strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("%q", out.String())
	}
}

// fleet diff into a pipe is byte for byte (| git apply works); into a
// terminal it is cleaned.
func TestDiffOutputCleansOnlyTerminals(t *testing.T) {
	patch := "+\x1b]0;owned\x07line\r\n+caf\xc3\xa9\n"
	var pipe bytes.Buffer
	w, flush := forPerson(&pipe)
	io.WriteString(w, patch)
	flush()
	if pipe.String() != patch {
		t.Fatalf("a pipe got %q", pipe.String())
	}
	var tty bytes.Buffer
	pretendTerminal(t, &tty)
	w, flush = forPerson(&tty)
	// Written in pieces, one splitting a character.
	for _, piece := range []string{patch[:3], patch[3 : len(patch)-2], patch[len(patch)-2:]} {
		io.WriteString(w, piece)
	}
	flush()
	if strings.ContainsAny(tty.String(), "\x1b\x07\r") || !strings.Contains(tty.String(), "café") {
		t.Fatalf("a terminal got %q", tty.String())
	}
}
