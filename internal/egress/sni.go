package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

var errHelloRead = errors.New("client hello read")

// readClientHello reads a TLS ClientHello from r and returns its server name
// and every byte it consumed, to be replayed to the upstream unchanged. The
// parsing is crypto/tls's own, so fragmented or odd hellos are read the way
// a real TLS server reads them; the handshake is abandoned once the hello is
// seen.
func readClientHello(ctx context.Context, r io.Reader) (string, []byte, error) {
	var raw bytes.Buffer
	var sni string
	seen := false
	conn := &helloConn{r: io.TeeReader(io.LimitReader(r, maxHeaderBytes), &raw)}
	srv := tls.Server(conn, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, seen = h.ServerName, true
			return nil, errHelloRead
		},
	})
	err := srv.HandshakeContext(ctx)
	if !seen {
		if err == nil {
			err = errors.New("no ClientHello")
		}
		return "", nil, err
	}
	return sni, raw.Bytes(), nil
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
