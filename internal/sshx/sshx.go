// Package sshx is agentfleet's SSH client. It trusts exactly one host key per
// target (generated on the host and injected at first boot), treats a machine
// as ready only once a full SSH handshake succeeds (QEMU's port forward
// accepts TCP long before sshd listens), and keeps one connection per
// machine so many commands share it.
package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Target says where a machine's sshd is and how to authenticate both ways.
type Target struct {
	Addr    string        // host:port
	User    string        // login user in the guest
	Signer  ssh.Signer    // the client's private key
	HostKey ssh.PublicKey // the only host key accepted
}

// HostKeyMismatchError means the server presented a key other than the pinned
// one: never retried, never accepted.
type HostKeyMismatchError struct {
	Addr      string
	Want, Got string // SHA256 fingerprints
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key mismatch for %s: expected %s, server offered %s (refusing to connect)", e.Addr, e.Want, e.Got)
}

func pinnedHostKey(want ssh.PublicKey) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		if want == nil {
			return errors.New("no pinned host key configured")
		}
		if !bytes.Equal(key.Marshal(), want.Marshal()) {
			return &HostKeyMismatchError{Addr: hostname, Want: ssh.FingerprintSHA256(want), Got: ssh.FingerprintSHA256(key)}
		}
		return nil
	}
}

// Dial makes one connection attempt, bounded by ctx and by handshakeTimeout.
func Dial(ctx context.Context, t Target, handshakeTimeout time.Duration) (*ssh.Client, error) {
	return dial(ctx, t, handshakeTimeout, handshakeTimeout)
}

// errNoBanner is a connection on which the server said nothing within
// the banner wait.
var errNoBanner = errors.New("no SSH banner yet")

// dial is Dial, giving up early when the server's first bytes (its SSH
// banner, sent as it accepts) do not come within bannerTimeout. Behind a
// hypervisor's user-mode forward, TCP connects at once whatever the
// guest does; a SYN the guest drops (its link just up) is sent again only
// after seconds, where a new connection is answered at once.
func dial(ctx context.Context, t Target, handshakeTimeout, bannerTimeout time.Duration) (*ssh.Client, error) {
	if t.Signer == nil {
		return nil, errors.New("sshx: no client key")
	}
	cfg := &ssh.ClientConfig{
		User:              t.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(t.Signer)},
		HostKeyCallback:   pinnedHostKey(t.HostKey),
		HostKeyAlgorithms: []string{t.HostKey.Type()},
		Timeout:           handshakeTimeout,
	}
	d := net.Dialer{Timeout: handshakeTimeout}
	conn, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	// Bound the handshake itself: a forwarder that accepts and then stalls
	// would otherwise hang us.
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	first := make([]byte, 1)
	bannerBy := time.Now().Add(bannerTimeout)
	if deadline.Before(bannerBy) {
		bannerBy = deadline
	}
	_ = conn.SetDeadline(bannerBy)
	if _, err := io.ReadFull(conn, first); err != nil {
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
			return nil, errNoBanner
		}
		return nil, err
	}
	_ = conn.SetDeadline(deadline)
	c, chans, reqs, err := ssh.NewClientConn(&replayConn{Conn: conn, first: first}, t.Addr, cfg)
	if err != nil {
		conn.Close()
		var mm *HostKeyMismatchError
		if errors.As(err, &mm) {
			return nil, mm
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// replayConn gives back the bytes read from it before, then the rest.
type replayConn struct {
	net.Conn
	first []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(b, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// Backoff controls WaitReady's retry pacing.
type Backoff struct {
	Initial, Max time.Duration
}

// DefaultBackoff suits a guest that is still booting. An attempt against
// the hypervisor's loopback forward before sshd listens costs a refused
// connection, so a short cap loses at most half a second once sshd is up
// (a restored clone's sshd is back about a second after its restore).
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond}

// handshakeTimeout bounds one attempt's handshake; firstBannerWait is how
// long WaitReady's first attempt waits for the server's first bytes.
const (
	handshakeTimeout = 20 * time.Second
	firstBannerWait  = 1500 * time.Millisecond
)

// WaitReady retries Dial until a handshake succeeds or ctx ends. A host key
// mismatch or an authentication failure stops it at once: waiting would not
// change the answer and retrying would hide an attack or a misconfiguration.
func WaitReady(ctx context.Context, t Target, b Backoff) (*ssh.Client, error) {
	delay := b.Initial
	// A banner wait that ran out doubles it: a guest under load may take
	// seconds to answer at all.
	banner := firstBannerWait
	var last error
	for attempt := 1; ; attempt++ {
		c, err := dial(ctx, t, handshakeTimeout, banner)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errNoBanner) {
			banner = min(2*banner, handshakeTimeout)
		}
		var mm *HostKeyMismatchError
		if errors.As(err, &mm) {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh %s not ready after %d attempts: %w (last error: %v)", t.Addr, attempt, ctx.Err(), last)
		case <-time.After(delay):
		}
		delay *= 2
		if delay > b.Max {
			delay = b.Max
		}
	}
}

// Pool keeps one connection per machine name and reuses it for every session.
type Pool struct {
	mu      sync.Mutex
	clients map[string]*ssh.Client
	backoff Backoff
}

// NewPool returns an empty pool.
func NewPool() *Pool { return &Pool{clients: map[string]*ssh.Client{}, backoff: DefaultBackoff} }

// Get returns the kept connection for name, connecting (and waiting for
// readiness within ctx) if there is none or the old one died.
func (p *Pool) Get(ctx context.Context, name string, t Target) (*ssh.Client, error) {
	p.mu.Lock()
	dead := p.clients[name]
	p.mu.Unlock()
	if dead != nil {
		// A cheap liveness probe: a dead transport fails this immediately.
		if _, _, err := dead.SendRequest("keepalive@agentfleet", true, nil); err == nil {
			return dead, nil
		}
		dead.Close()
	}
	c, err := WaitReady(ctx, t, p.backoff)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if other := p.clients[name]; other != nil && other != dead {
		// Another caller connected meanwhile and may be using it: keep
		// theirs, not ours.
		c.Close()
		return other, nil
	}
	p.clients[name] = c
	return c, nil
}

// Drop closes and forgets name's connection.
func (p *Pool) Drop(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.clients[name]; c != nil {
		c.Close()
		delete(p.clients, name)
	}
}

// Close closes every kept connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n, c := range p.clients {
		c.Close()
		delete(p.clients, n)
	}
}
