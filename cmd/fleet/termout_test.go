package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
	"github.com/spf13/cobra"
)

var hostile = termsafetest.Hostile

var rawControl = termsafetest.RawControl

func TestExitStatusNeverReadsAsSuccess(t *testing.T) {
	for code, want := range map[int]int{0: 1, 1: 1, 2: 2, 130: 130, 255: 255, 256: 255, 257: 255, 512: 255, -1: 255, -256: 255, 1 << 32: 255, 4294967295: 255} {
		if got := exitStatus(code); got != want {
			t.Errorf("exitStatus(%d) = %d, want %d", code, got, want)
		}
	}
}

func TestWaitExitCountsStatesNotNumbers(t *testing.T) {
	ok := fleet.WaitResult{Status: session.Status{State: session.Succeeded}}
	for _, tc := range []struct {
		name string
		res  []fleet.WaitResult
		want int
	}{
		{"all succeeded", []fleet.WaitResult{ok, ok}, 0},
		{"idle", []fleet.WaitResult{{Status: session.Status{State: session.Idle}}}, 0},
		{"failed with 256", []fleet.WaitResult{ok, {Status: session.Status{State: session.Failed, ExitCode: 256}}}, 1},
		{"failed with -1", []fleet.WaitResult{{Status: session.Status{State: session.Failed, ExitCode: -1}}}, 1},
		{"failed with 0", []fleet.WaitResult{{Status: session.Status{State: session.Failed}}}, 1},
		{"lost", []fleet.WaitResult{{Status: session.Status{State: session.Lost}}}, 1},
		{"timed out", []fleet.WaitResult{ok, {Status: session.Status{State: session.Working}, Err: "timed out", TimedOut: true}}, 2},
		{"no state", []fleet.WaitResult{{}}, 1},
		{"a state no one knows", []fleet.WaitResult{{Status: session.Status{State: "succeeded\x00"}}}, 1},
	} {
		if got := waitExit(tc.res); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// pretendTerminal makes isTerminal true for w for the test's length.
func pretendTerminal(t *testing.T, w io.Writer) {
	old := isTerminal
	isTerminal = func(x io.Writer) bool { return x == w }
	t.Cleanup(func() { isTerminal = old })
}

func TestGuestBytesReachATerminalCleanAndAPipeRaw(t *testing.T) {
	in := "ok " + strings.Join(hostile, " ") + " é\n"
	var term, pipe bytes.Buffer
	pretendTerminal(t, &term)
	for _, w := range []*bytes.Buffer{&term, &pipe} {
		out, flush := forPerson(w)
		// Byte by byte: a sequence split across writes is still caught.
		for i := 0; i < len(in); i++ {
			out.Write([]byte{in[i]})
		}
		flush()
	}
	if where, bad := rawControl(term.String()); bad || !strings.Contains(term.String(), "é") {
		t.Fatalf("terminal got %q: raw %s", term.String(), where)
	}
	if pipe.String() != in {
		t.Fatalf("a pipe got %q, want the bytes as written", pipe.String())
	}
}

func TestGuestFieldsInTablesAndErrorsAreClean(t *testing.T) {
	for _, h := range hostile {
		st := session.Status{State: session.Failed, ExitCode: 1, Message: "unreadable exit status " + h}
		for _, s := range []string{cell(agentCell(st, "")), cell(agentCell(session.Status{}, h)), cell("paused: " + h + "\tcol"), oneLineErr(errors.New("x " + h))} {
			if where, bad := rawControl(s); bad || strings.ContainsAny(s, "\t\n") {
				t.Errorf("%q: raw %s", s, where)
			}
		}
	}
}

// --json listings carry guest strings: a CSI or a bidi override in one is
// a \u escape, the same JSON value, never the rune itself.
func TestPrintJSONEscapesTerminalControls(t *testing.T) {
	var out bytes.Buffer
	cmd := &cobra.Command{}
	cmd.SetOut(&out)
	hostile := "done\u009b2J\u202eexe"
	if err := printJSON(cmd, []map[string]string{{"state": hostile}}); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsRune(out.String(), 0x9b) || strings.ContainsRune(out.String(), 0x202e) {
		t.Fatalf("raw controls in %q", out.String())
	}
	var back []map[string]string
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back[0]["state"] != hostile {
		t.Fatalf("not the same JSON: %v %q", err, out.String())
	}
}
