package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"time"
)

var errHelloRead = errors.New("client hello read")

// helloInfo is what a ClientHello says about where it goes.
type helloInfo struct {
	SNI string
	ECH bool // it carries an encrypted_client_hello extension
	Raw []byte
}

// readClientHello reads a TLS ClientHello from r and returns what it names
// and every byte it consumed, whole records only, to be replayed to the
// upstream unchanged. The parsing is crypto/tls's own, so fragmented or odd
// hellos are read the way a real TLS server reads them; the handshake is
// abandoned once the hello is seen.
func readClientHello(ctx context.Context, r io.Reader) (helloInfo, error) {
	var raw bytes.Buffer
	var hi helloInfo
	seen := false
	conn := &helloConn{r: io.TeeReader(&recordBounded{r: io.LimitReader(r, maxHeaderBytes)}, &raw)}
	srv := tls.Server(conn, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hi.SNI, hi.ECH, seen = h.ServerName, slices.Contains(h.Extensions, extECH), true
			return nil, errHelloRead
		},
	})
	err := srv.HandshakeContext(ctx)
	if !seen {
		if err == nil {
			err = errors.New("no ClientHello")
		}
		return helloInfo{}, err
	}
	hi.Raw = raw.Bytes()
	return hi, nil
}

// helloConn is the read side of a connection as crypto/tls needs it; what
// the abandoned handshake would write back (an alert) is dropped.
type helloConn struct{ r io.Reader }

func (c *helloConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *helloConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *helloConn) Close() error                     { return nil }
func (c *helloConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *helloConn) SetDeadline(time.Time) error      { return nil }
func (c *helloConn) SetReadDeadline(time.Time) error  { return nil }
func (c *helloConn) SetWriteDeadline(time.Time) error { return nil }
