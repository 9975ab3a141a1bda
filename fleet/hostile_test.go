package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/crypto/ssh"
)

// A hostile guest: an in-process sshd with the machine's pinned host key
// whose every command is answered by handle. No VM boots.
type hostileGuest struct {
	mu     sync.Mutex
	handle func(cmd string, stdout, stderr io.Writer) uint32
}

func (g *hostileGuest) set(h func(cmd string, stdout, stderr io.Writer) uint32) {
	g.mu.Lock()
	g.handle = h
	g.mu.Unlock()
}

// runningDriver says every machine runs.
type runningDriver struct{ vm.Driver }

func (runningDriver) Name() string { return "fake" }
func (runningDriver) Status(context.Context, vm.Spec) (vm.Status, error) {
	return vm.Status{Power: vm.PowerOn}, nil
}

// newHostileFleet returns a controller and one machine whose guest is g.
func newHostileFleet(t *testing.T) (*Controller, *Machine, *hostileGuest) {
	t.Helper()
	c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "h", Driver: runningDriver{}}
	os.MkdirAll(c.Layout.FleetDir(c.Fleet), 0o700)
	client, _, err := c.Guests().fleetKey(true)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := sshx.NewKeyPair("")
	if err != nil {
		t.Fatal(err)
	}
	host, err := ssh.ParsePrivateKey(kp.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	g := &hostileGuest{}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) != string(client.PublicKey().Marshal()) {
			return nil, errors.New("unknown key")
		}
		return nil, nil
	}}
	cfg.AddHostKey(host)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(nc, cfg)
		}
	}()
	m := &Machine{Name: "h-1", Dir: t.TempDir(), HostKey: kp.AuthorizedKey, Desired: WantRunning, SSHAddr: ln.Addr().String()}
	t.Cleanup(c.Close)
	return c, m, g
}

func (g *hostileGuest) serve(nc net.Conn, cfg *ssh.ServerConfig) {
	sc, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				r.Reply(true, nil)
				g.mu.Lock()
				h := g.handle
				g.mu.Unlock()
				status := h(string(r.Payload[4:]), ch, ch.Stderr())
				ch.CloseWrite()
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ S uint32 }{status}))
				return
			}
		}()
	}
}

// flood writes n bytes of b repeated, in chunks, and no newline unless b
// has one: what a guest that wants the host's memory sends.
func flood(w io.Writer, b string, n int) (sent int) {
	chunk := []byte(strings.Repeat(b, 32<<10/len(b)+1))[:32<<10]
	for ; sent < n; sent += len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			return sent
		}
	}
	return sent
}

var hostile = termsafetest.Hostile

var rawControl = termsafetest.RawControl

const floodSize = 24 << 20 // well past every bound, cheap over loopback

func TestGuestAnswersAreBounded(t *testing.T) {
	c, m, g := newHostileFleet(t)
	ctx := context.Background()
	// A status answer with no end: refused, not held.
	g.set(func(_ string, out, _ io.Writer) uint32 { flood(out, "A", floodSize); return 0 })
	if _, err := c.Sessions().SessionStatus(ctx, m); !errors.Is(err, bounded.ErrTooLong) {
		t.Fatalf("a %d-byte status answer: %v", floodSize, err)
	}
	if err := c.Sessions().KillSession(ctx, m); !errors.Is(err, bounded.ErrTooLong) {
		t.Fatalf("a %d-byte kill answer: %v", floodSize, err)
	}
	// Past the limit the host stops reading: a guest that would send 1 GiB
	// gets to send little more than the limit and what is in flight.
	sent := make(chan int, 1)
	g.set(func(_ string, out, _ io.Writer) uint32 { sent <- flood(out, "A", 1<<30); return 0 })
	if _, err := c.Sessions().SessionStatus(ctx, m); !errors.Is(err, bounded.ErrTooLong) {
		t.Fatalf("a 1 GiB status answer: %v", err)
	}
	if n := <-sent; n > 32<<20 {
		t.Fatalf("the host read on: the guest sent %d MiB of a status", n>>20)
	}
	// A snapshot that is well-formed but for its many lines.
	g.set(func(_ string, out, _ io.Writer) uint32 { flood(out, "last=41\n", floodSize); return 0 })
	if _, err := c.Sessions().SessionStatus(ctx, m); err == nil {
		t.Fatal("a flood of snapshot lines was read as a status")
	}
	// A failure whose stderr floods, escape sequences and all: the error
	// keeps the end, cleaned.
	for _, h := range hostile {
		g.set(func(_ string, _, errw io.Writer) uint32 {
			flood(errw, "x"+h+"\n", floodSize)
			fmt.Fprintf(errw, "last words %s\n", h)
			return 1
		})
		err := c.Sessions().KillSession(ctx, m)
		var ge *guest.Error
		if !errors.As(err, &ge) || ge.Code != 1 {
			t.Fatalf("a failed kill: %v", err)
		}
		if len(err.Error()) > bounded.Stderr*4 || !strings.Contains(err.Error(), "last words") {
			t.Fatalf("stderr error is %d bytes: %.200q", len(err.Error()), err.Error())
		}
		if where, bad := rawControl(err.Error()); bad {
			t.Fatalf("stderr %q in an error: raw %s", h, where)
		}
	}
}

func TestStartSessionRefusesAFloodingGuest(t *testing.T) {
	c, m, g := newHostileFleet(t)
	g.set(func(cmd string, out, _ io.Writer) uint32 {
		if strings.Contains(cmd, session.StatusScript()) { // the status check before the start
			fmt.Fprint(out, "state=idle\n.\n")
			return 0
		}
		flood(out, "B", floodSize)
		return 0
	})
	err := c.Sessions().StartSession(context.Background(), m, SessionRequest{Task: []byte("t"), Profile: session.Claude, Getenv: func(string) string { return "" }})
	if !errors.Is(err, bounded.ErrTooLong) {
		t.Fatalf("start against a flooding guest: %v", err)
	}
}

// countingWriter keeps what it is given up to keep bytes and counts all.
type countingWriter struct {
	mu   sync.Mutex
	n    int64
	keep int
	b    []byte
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n += int64(len(p))
	if room := w.keep - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func TestLogsCutAnEndlessLine(t *testing.T) {
	c, m, g := newHostileFleet(t)
	g.set(func(_ string, out, _ io.Writer) uint32 {
		flood(out, "{", floodSize)
		fmt.Fprint(out, "\nnext line\n")
		return 0
	})
	for _, tc := range []struct {
		name        string
		raw, prefix bool
	}{{"rendered", false, false}, {"rendered, prefixed", false, true}, {"raw, prefixed", true, true}} {
		w := &countingWriter{keep: 4 << 20}
		if err := c.Sessions().Logs(context.Background(), []*Machine{m}, false, tc.raw, tc.prefix, w); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out := string(w.b)
		first, rest, _ := strings.Cut(out, "\n")
		// floodSize rounds up to whole 32 KiB chunks.
		sent := (floodSize + 32<<10 - 1) / (32 << 10) * (32 << 10)
		mark := fmt.Sprintf("line cut, %d more bytes dropped", sent-bounded.Line)
		if w.n > bounded.Line+1024 || len(first) > bounded.Line+200 || !strings.Contains(first, mark) {
			t.Fatalf("%s: %d bytes out, first line %d bytes ending %q", tc.name, w.n, len(first), first[max(0, len(first)-80):])
		}
		if !strings.Contains(rest, "next line") {
			t.Fatalf("%s: the line after the cut one is lost: %q", tc.name, rest)
		}
	}
	// Raw to one place streams through: nothing is cut, nothing is held.
	w := &countingWriter{}
	if err := c.Sessions().Logs(context.Background(), []*Machine{m}, false, true, false, w); err != nil || w.n < floodSize {
		t.Fatalf("raw: %d bytes, %v", w.n, err)
	}
}

func TestRenderedLogsAndPrefixedExecHaveNoRawControls(t *testing.T) {
	c, m, g := newHostileFleet(t)
	var log strings.Builder
	for _, h := range hostile {
		fmt.Fprintf(&log, "plain %s line\n", h)
		fmt.Fprintf(&log, `{"type":"assistant","message":{"content":[{"type":"text","text":%q}]}}`+"\n", h)
	}
	g.set(func(_ string, out, errw io.Writer) uint32 {
		fmt.Fprint(out, log.String())
		fmt.Fprint(errw, log.String())
		return 0
	})
	w := &countingWriter{keep: 1 << 20}
	if err := c.Sessions().Logs(context.Background(), []*Machine{m, m}, false, false, true, w); err != nil {
		t.Fatal(err)
	}
	if where, bad := rawControl(string(w.b)); bad {
		t.Fatalf("rendered logs: raw %s in %q", where, w.b)
	}
	if !strings.Contains(string(w.b), `h-1: plain \e[2K line`) {
		t.Fatalf("rendered logs lost the text: %q", w.b)
	}
	// Exec's prefixing keeps lines whole and bounded; the CLI cleans them
	// for a terminal.
	g.set(func(_ string, out, _ io.Writer) uint32 {
		flood(out, "z", floodSize)
		fmt.Fprint(out, "\nok\n")
		return 0
	})
	w = &countingWriter{keep: 4 << 20}
	res := c.Sessions().Exec(context.Background(), []*Machine{m}, []string{"x"}, nil, w, io.Discard, true)
	if res[0].Err != nil || w.n > bounded.Line+1024 || !strings.HasSuffix(string(w.b), "h-1: ok\n") {
		t.Fatalf("exec: %+v, %d bytes out", res[0], w.n)
	}
}

func TestExitCodesCannotBeForged(t *testing.T) {
	for _, tc := range []struct {
		codes []int
		err   bool
		want  int
	}{
		{[]int{0}, false, 0},
		{[]int{0, 0, 0}, false, 0},
		{[]int{1}, false, 1},
		{[]int{256}, false, 255},
		{[]int{0, 256}, false, 255},
		{[]int{512, 0}, false, 255},
		{[]int{-1}, false, 255},
		{[]int{-256}, false, 255},
		{[]int{1 << 32}, false, 255},
		{[]int{4294967295}, false, 255},
		{[]int{2, 7, 3}, false, 7},
		{[]int{0, 1, 256}, false, 255},
		{[]int{0}, true, 255},
		{[]int{1, 0}, true, 255},
	} {
		var rs []ExecResult
		for i, code := range tc.codes {
			r := ExecResult{Machine: fmt.Sprint(i), ExitCode: code}
			if tc.err && i == len(tc.codes)-1 {
				r.Err = errors.New("connection lost")
			}
			rs = append(rs, r)
		}
		if got := WorstExit(rs); got != tc.want {
			t.Errorf("codes %v (err %v): exit %d, want %d", tc.codes, tc.err, got, tc.want)
		}
		if got := WorstExit(rs); got < 0 || got > 255 || (got == 0) != (tc.want == 0) {
			t.Errorf("codes %v: exit %d is not one a process can report", tc.codes, got)
		}
	}
	// Through SSH: a guest's sshd sends any 32-bit status.
	c, m, g := newHostileFleet(t)
	for _, status := range []uint32{256, 512, 1<<32 - 1, 1 << 31} {
		g.set(func(string, io.Writer, io.Writer) uint32 { return status })
		res := c.Sessions().Exec(context.Background(), []*Machine{m, m}, []string{"x"}, nil, io.Discard, io.Discard, true)
		if got := WorstExit(res); got != 255 {
			t.Errorf("guest status %d: exit %d, want 255", status, got)
		}
	}
}

func TestWaitEndsOnAnUnreadableExitAndTimesOut(t *testing.T) {
	c, m, g := newHostileFleet(t)
	for _, exit := range []string{"256", "-1", "1e9", "0x0", " 0", "99999999999999999999"} {
		g.set(func(_ string, out, _ io.Writer) uint32 {
			fmt.Fprintf(out, "started=1\nnow=2\nexit=%s\n.\n", exit)
			return 0
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res := c.Sessions().Wait(ctx, []*Machine{m}, 10*time.Millisecond, nil)
		cancel()
		if res[0].Err != "" || res[0].Status.State != session.Failed || res[0].Status.ExitCode == 0 {
			t.Errorf("exit=%q: %+v", exit, res[0])
		}
	}
	// An agent that never ends: the deadline ends the wait, and says so.
	g.set(func(_ string, out, _ io.Writer) uint32 {
		fmt.Fprintf(out, "started=1\nnow=%d\nalive=1\n.\n", time.Now().Unix())
		return 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	res := c.Sessions().Wait(ctx, []*Machine{m}, 10*time.Millisecond, nil)
	if !res[0].TimedOut || !strings.Contains(res[0].Err, "timed out while the agent was working") || res[0].Status.State != session.Working {
		t.Fatalf("a wait past its deadline: %+v", res[0])
	}
}

func TestProgressCarriesNoRawGuestBytes(t *testing.T) {
	var out strings.Builder
	c := &Controller{Progress: &out}
	for _, h := range hostile {
		c.say("%s: collected %s", "m-1", "refs/heads/"+h)
	}
	if where, bad := rawControl(out.String()); bad || strings.Count(out.String(), "\n") != len(hostile) {
		t.Fatalf("progress %q: raw %s", out.String(), where)
	}
}
