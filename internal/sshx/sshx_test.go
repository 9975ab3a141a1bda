package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/guest"
	"golang.org/x/crypto/ssh"
)

type testServer struct {
	ln       net.Listener
	hostKey  ssh.Signer
	accepted atomic.Int32
}

// startServer runs an in-process sshd that accepts clientKey and answers
// "exit N" with status N and anything else by echoing it.
func startServer(t *testing.T, ln net.Listener, hostKey ssh.Signer, clientKey ssh.PublicKey) *testServer {
	t.Helper()
	srv := &testServer{ln: ln, hostKey: hostKey}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), clientKey.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				sc, chans, reqs, err := ssh.NewServerConn(nc, cfg)
				if err != nil {
					return
				}
				srv.accepted.Add(1)
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
							cmd := string(r.Payload[4:])
							r.Reply(true, nil)
							status := 0
							if _, err := fmt.Sscanf(cmd, "exit %d", &status); err != nil {
								fmt.Fprint(ch, cmd)
							}
							ch.CloseWrite() // EOF before the status, as sshd does
							ch.SendRequest("exit-status", false, ssh.Marshal(struct{ S uint32 }{uint32(status)}))
							return
						}
					}()
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return srv
}

// waitAccepted lets the server goroutine record a handshake the client has
// already finished.
func (s *testServer) waitAccepted(want int32) int32 {
	deadline := time.Now().Add(2 * time.Second)
	for s.accepted.Load() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // and see no extra one arrive
	return s.accepted.Load()
}

func newSigner(t *testing.T) ssh.Signer {
	kp, err := NewKeyPair("test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(kp.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPinnedKeyAcceptedAndExitCodesReturned(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	startServer(t, ln, host, client.PublicKey())
	tgt := Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}
	c, err := WaitReady(context.Background(), tgt, DefaultBackoff)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out, errOut bytes.Buffer
	code, err := runCmd(context.Background(), c, "hello", nil, &out, &errOut)
	if err != nil || code != 0 || out.String() != "hello" {
		t.Fatalf("code=%d err=%v out=%q", code, err, out.String())
	}
	code, err = runCmd(context.Background(), c, "exit 7", nil, &out, &out)
	if err != nil || code != 7 {
		t.Fatalf("code=%d err=%v", code, err)
	}
}

func TestWrongHostKeyRefusedWithoutRetry(t *testing.T) {
	host, impostor, client := newSigner(t), newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	startServer(t, ln, impostor, client.PublicKey())
	tgt := Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := WaitReady(ctx, tgt, DefaultBackoff)
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("want host key mismatch, got %v", err)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(impostor.PublicKey())) {
		t.Errorf("error should name the offered key: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Error("a key mismatch must fail at once, not be retried")
	}
}

func TestLateServerIsWaitedFor(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	// A listener that accepts and drops connections stands in for QEMU's
	// forwarder before sshd is up: TCP connects, the handshake fails.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	go func() {
		time.Sleep(1500 * time.Millisecond)
		ln.Close()
		ln2, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		startServer(t, ln2, host, client.PublicKey())
	}()
	tgt := Target{Addr: addr, User: "agent", Signer: client, HostKey: host.PublicKey()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := WaitReady(ctx, tgt, Backoff{Initial: 50 * time.Millisecond, Max: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// A connection the forward accepts but the guest never answers (a SYN it
// dropped) is given up for a new one after the banner wait, not after
// the whole handshake timeout.
func TestWaitReadyRetriesASilentConnection(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		held <- c // open, saying nothing
		startServer(t, ln, host, client.PublicKey())
	}()
	defer func() {
		if c := <-held; c != nil {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	t0 := time.Now()
	c, err := WaitReady(ctx, Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}, Backoff{Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if took := time.Since(t0); took < firstBannerWait || took > firstBannerWait+3*time.Second {
		t.Errorf("ready after %s, want about the banner wait (%s) after the silent connection", took, firstBannerWait)
	}
}

func TestWaitReadyGivesUpAtDeadline(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nothing listens
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := WaitReady(ctx, Target{Addr: addr, User: "a", Signer: client, HostKey: host.PublicKey()}, Backoff{Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("got %v", err)
	}
}

func TestPoolKeepsOneConnection(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := startServer(t, ln, host, client.PublicKey())
	tgt := Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}
	p := NewPool()
	defer p.Close()
	for i := 0; i < 5; i++ {
		c, err := p.Get(context.Background(), "vm-1", tgt)
		if err != nil {
			t.Fatal(err)
		}
		if code, err := runCmd(context.Background(), c, "exit 0", nil, nil, nil); err != nil || code != 0 {
			t.Fatal(code, err)
		}
	}
	if n := srv.waitAccepted(1); n != 1 {
		t.Fatalf("pool opened %d connections for 5 commands, want 1", n)
	}
	// A dropped connection is replaced transparently.
	p.Drop("vm-1")
	if _, err := p.Get(context.Background(), "vm-1", tgt); err != nil {
		t.Fatal(err)
	}
	if n := srv.waitAccepted(2); n != 2 {
		t.Fatalf("after drop want a second connection, got %d", n)
	}
}

// Callers that connect at once each get a connection that stays open:
// the one that loses the race does not close the winner's under it.
func TestPoolConcurrentGetsShareALiveConnection(t *testing.T) {
	host, client := newSigner(t), newSigner(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	startServer(t, ln, host, client.PublicKey())
	tgt := Target{Addr: ln.Addr().String(), User: "agent", Signer: client, HostKey: host.PublicKey()}
	p := NewPool()
	defer p.Close()
	errs := make(chan error, 8)
	for i := 0; i < cap(errs); i++ {
		go func() {
			c, err := p.Get(context.Background(), "vm-1", tgt)
			if err == nil {
				for j := 0; j < 5 && err == nil; j++ {
					_, err = runCmd(context.Background(), c, "hello", nil, nil, nil)
				}
			}
			errs <- err
		}()
	}
	for i := 0; i < cap(errs); i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// runCmd runs one command on c as fleet does, through internal/guest,
// and gives its exit status (-1 and the error if it could not run).
func runCmd(ctx context.Context, c *ssh.Client, command string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	err := guest.New("test", guest.SSH(c)).Run(ctx, guest.Cmd{Step: "run", Script: command, Stdin: stdin, Stdout: stdout, Stderr: stderr})
	if code := guest.ExitCode(err); code >= 0 {
		return code, nil
	}
	return -1, err
}
