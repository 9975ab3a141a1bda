package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// A tunnel that is not raw carries TLS records and nothing else, both ways,
// for as long as it lives: checking only the first ClientHello would let a
// guest send a throwaway hello and then switch to cleartext (EHLO,
// STARTTLS) or to a second TLS session to another name. A framer checks
// one direction's stream as it passes, byte by byte across any read
// boundaries, and holds nothing but a record header and, while one is in
// flight, a hello it must read before its last byte goes on.
//
// What it checks:
//   - every record: content type change_cipher_spec, alert, handshake or
//     application_data (heartbeat is refused: nothing needs it and it was
//     Heartbleed's way in), version 3.1 to 3.3, length at most 2^14+2048
//     (TLS 1.2's ciphertext limit; TLS 1.3's is lower), no empty alert or
//     handshake record, and the first ChangeCipherSpec of each direction is
//     the single byte 1 (it is always sent in the clear);
//   - from the upstream: the first record is a handshake or an alert, and
//     its first handshake message is a ServerHello, which says whether the
//     session is TLS 1.3;
//   - from the guest: every ClientHello it sends in the clear names the
//     CONNECT host. A ClientHello in the clear is legitimately sent again in
//     TLS 1.3 after a HelloRetryRequest, and must name the same server.
//
// When handshake records are cleartext, and so readable: from the guest,
// before the upstream's ServerHello has passed (no keys exist yet, and the
// tunnel sends nothing more of the guest's until then), always in TLS 1.3
// (encrypted records there are all application_data), and in TLS 1.2 until
// the guest's ChangeCipherSpec. After that, TLS 1.2 handshake records are
// encrypted: a renegotiation's ClientHello is unreadable here, and is the
// server's business, within a session it already holds for the CONNECT
// host.

// TLS record content types.
const (
	recChangeCipherSpec = 20
	recAlert            = 21
	recHandshake        = 22
	recApplicationData  = 23
	recHeartbeat        = 24
)

// Handshake message types the framer reads.
const (
	hsClientHello = 1
	hsServerHello = 2
)

const (
	recordHeaderLen = 5
	maxRecordLen    = 1<<14 + 2048
	// maxHelloLen bounds a hello held to be parsed. Real ones take a few
	// KiB, post-quantum key shares included.
	maxHelloLen = 32 << 10
	// extSupportedVersions and extECH are TLS extension numbers.
	extSupportedVersions = 43
	extECH               = 0xfe0d
)

// side is which end of a tunnel wrote a stream.
type side int

const (
	fromGuest side = iota
	fromUpstream
)

func (s side) String() string {
	if s == fromGuest {
		return "the guest"
	}
	return "the upstream"
}

// tlsSession is what the two directions of one tunnel share.
type tlsSession struct {
	once      sync.Once
	helloSeen chan struct{} // closed once the upstream's ServerHello passed
	tls13     atomic.Bool   // that ServerHello chose TLS 1.3 (or later)
}

func newTLSSession() *tlsSession { return &tlsSession{helloSeen: make(chan struct{})} }

// framingError is why a stream stopped being TLS, and where.
type framingError struct {
	from side
	off  int64 // offset of the offending byte in its direction's stream
	why  string
}

func (e *framingError) Error() string {
	return fmt.Sprintf("%s broke TLS framing at byte %d: %s", e.from, e.off, e.why)
}

// framer checks one direction of a tunnel. It is not safe for concurrent
// use; the two directions share only their tlsSession.
type framer struct {
	from side
	sess *tlsSession
	host Host // what every ClientHello must name
	off  int64

	hdr     [recordHeaderLen]byte
	nhdr    int
	inBody  bool
	left    int // body bytes of the current record still to come
	records int
	ccs     bool // this direction sent its first ChangeCipherSpec

	mhdr   [4]byte // the current handshake message's header
	nmhdr  int
	mleft  int    // its body bytes still to come
	msg    []byte // a hello held for parsing, header included
	msgs   int    // handshake messages read in this direction
	hellos int    // ClientHellos among them
}

func newFramer(from side, sess *tlsSession, h Host) *framer {
	return &framer{from: from, sess: sess, host: h}
}

// feed checks p, the next bytes of the stream. It returns how many of them
// are good to forward, all of them or those before the offending byte, and
// the reason it stopped. After an error the framer must not be fed again.
func (f *framer) feed(p []byte) (int, error) {
	for i := 0; i < len(p); {
		if !f.inBody {
			c := p[i]
			f.hdr[f.nhdr] = c
			if why := f.headerByte(f.nhdr, c); why != "" {
				return i, f.fail(i, why)
			}
			f.nhdr++
			i++
			if f.nhdr == recordHeaderLen {
				f.nhdr, f.inBody = 0, true
				f.left = int(f.hdr[3])<<8 | int(f.hdr[4])
				if f.left == 0 {
					f.endRecord()
				}
			}
			continue
		}
		n := min(f.left, len(p)-i)
		if k, why := f.body(p[i : i+n]); why != "" {
			return i + k, f.fail(i+k, why)
		}
		i += n
		f.left -= n
		if f.left == 0 {
			f.endRecord()
		}
	}
	f.off += int64(len(p))
	return len(p), nil
}

func (f *framer) fail(i int, why string) error {
	off := f.off + int64(i)
	f.off = off
	return &framingError{from: f.from, off: off, why: why}
}

func (f *framer) endRecord() {
	f.inBody = false
	f.records++
	if f.hdr[0] == recChangeCipherSpec {
		f.ccs = true
	}
}

// headerByte checks byte i of a record header; the header's earlier bytes
// are in f.hdr.
func (f *framer) headerByte(i int, c byte) string {
	switch i {
	case 0:
		switch {
		case c == recHeartbeat:
			return "a heartbeat record (0x18), which a tunnel does not carry"
		case c < recChangeCipherSpec || c > recApplicationData:
			return fmt.Sprintf("byte 0x%02x %q is not a TLS record's content type", c, rune(c))
		case f.msg != nil && c != recHandshake:
			return fmt.Sprintf("a record of content type %d inside a hello", c)
		case f.records == 0 && f.from == fromUpstream && c != recHandshake && c != recAlert:
			return fmt.Sprintf("a first record of content type %d, not a handshake or an alert", c)
		case f.records == 0 && f.from == fromGuest && c != recHandshake:
			return fmt.Sprintf("a first record of content type %d, not a handshake", c)
		}
	case 1:
		if c != 3 {
			return fmt.Sprintf("record version byte 0x%02x, not 0x03", c)
		}
	case 2:
		if c < 1 || c > 3 {
			return fmt.Sprintf("record version 3.%d, not TLS 1.0 to 1.3's 3.1 to 3.3", c)
		}
	case 4:
		n := int(f.hdr[3])<<8 | int(c)
		switch t := f.hdr[0]; {
		case n > maxRecordLen:
			return fmt.Sprintf("a record length of %d, over TLS's %d", n, maxRecordLen)
		case n == 0 && (t == recAlert || t == recHandshake):
			return fmt.Sprintf("an empty record of content type %d", t)
		case t == recChangeCipherSpec && !f.ccs && n != 1:
			return fmt.Sprintf("a ChangeCipherSpec record of %d bytes, not 1", n)
		}
	}
	return ""
}

// body checks a piece of the current record's body. On refusal it returns
// the offset of the offending byte in b.
func (f *framer) body(b []byte) (int, string) {
	switch f.hdr[0] {
	case recChangeCipherSpec:
		if !f.ccs && b[0] != 1 {
			return 0, fmt.Sprintf("a ChangeCipherSpec of 0x%02x, not 0x01", b[0])
		}
	case recHandshake:
		if f.readable() {
			return f.handshake(b)
		}
	}
	return 0, ""
}

// readable says whether this direction's handshake records are still in
// the clear, and so read.
func (f *framer) readable() bool {
	if f.from == fromUpstream {
		return f.msgs == 0 // its first message, the ServerHello
	}
	return f.sess.tls13.Load() || !f.ccs
}

// handshake follows the handshake messages in handshake records' bodies,
// which TLS may split across records or pack several to a record.
func (f *framer) handshake(b []byte) (int, string) {
	for j := 0; j < len(b); {
		if f.nmhdr < len(f.mhdr) {
			f.mhdr[f.nmhdr] = b[j]
			f.nmhdr++
			j++
			if f.nmhdr < len(f.mhdr) {
				continue
			}
			t, n := f.mhdr[0], int(f.mhdr[1])<<16|int(f.mhdr[2])<<8|int(f.mhdr[3])
			if f.from == fromUpstream && t != hsServerHello {
				return j - 1, fmt.Sprintf("a first handshake message of type %d, not a ServerHello", t)
			}
			if t == hsClientHello || t == hsServerHello {
				if n > maxHelloLen {
					return j - 1, fmt.Sprintf("a hello of %d bytes, over the %d this proxy reads", n, maxHelloLen)
				}
				f.msg = append(make([]byte, 0, len(f.mhdr)+n), f.mhdr[:]...)
			}
			f.mleft = n
		} else {
			k := min(f.mleft, len(b)-j)
			if f.msg != nil {
				f.msg = append(f.msg, b[j:j+k]...)
			}
			j += k
			f.mleft -= k
		}
		if f.mleft == 0 {
			if why := f.endMessage(); why != "" {
				return j - 1, why
			}
		}
	}
	return 0, ""
}

// endMessage judges a complete handshake message: a ClientHello must name
// the CONNECT host; a ServerHello tells the session's version.
func (f *framer) endMessage() string {
	msg := f.msg
	f.msg, f.nmhdr = nil, 0
	f.msgs++
	if msg == nil {
		return ""
	}
	if f.from == fromUpstream {
		tls13, err := serverHelloTLS13(msg[len(f.mhdr):])
		if err != nil {
			return "a malformed ServerHello: " + err.Error()
		}
		f.sess.tls13.Store(tls13)
		f.sess.once.Do(func() { close(f.sess.helloSeen) })
		return ""
	}
	f.hellos++
	hi, err := parseClientHelloMsg(msg)
	if err != nil {
		return "a malformed ClientHello: " + shortErr(err)
	}
	if why := helloProblem(f.host, hi); why != "" {
		return "a ClientHello refused: " + why
	}
	return ""
}

// parseClientHelloMsg reads a handshake message held whole, framed as the
// records crypto/tls reads.
func parseClientHelloMsg(msg []byte) (helloInfo, error) {
	var recs bytes.Buffer
	for len(msg) > 0 {
		n := min(len(msg), 1<<14)
		recs.Write([]byte{recHandshake, 3, 1, byte(n >> 8), byte(n)})
		recs.Write(msg[:n])
		msg = msg[n:]
	}
	return readClientHello(context.Background(), &recs)
}

var errShortHello = errors.New("too short")

// serverHelloTLS13 reads a ServerHello's body far enough to know whether it
// chose TLS 1.3: its supported_versions extension says 3.4 (RFC 8446 4.1.3).
func serverHelloTLS13(b []byte) (bool, error) {
	// legacy_version, random, session id, cipher suite, compression.
	if len(b) < 2+32+1 {
		return false, errShortHello
	}
	b = b[34:]
	if sid := int(b[0]); len(b) < 1+sid+3 {
		return false, errShortHello
	} else {
		b = b[1+sid+3:]
	}
	if len(b) == 0 {
		return false, nil // no extensions: TLS 1.2 or older
	}
	if len(b) < 2 || int(b[0])<<8|int(b[1]) != len(b)-2 {
		return false, errors.New("bad extensions length")
	}
	for b = b[2:]; len(b) > 0; {
		if len(b) < 4 {
			return false, errShortHello
		}
		t, n := int(b[0])<<8|int(b[1]), int(b[2])<<8|int(b[3])
		if len(b) < 4+n {
			return false, errShortHello
		}
		if t == extSupportedVersions {
			if n != 2 {
				return false, errors.New("bad supported_versions")
			}
			return b[4] > 3 || b[4] == 3 && b[5] >= 4, nil
		}
		b = b[4+n:]
	}
	return false, nil
}

// framedReader passes on what it reads while the framer accepts it.
type framedReader struct {
	r io.Reader
	f *framer
}

func (fr framedReader) Read(b []byte) (int, error) {
	n, err := fr.r.Read(b)
	if n > 0 {
		if k, ferr := fr.f.feed(b[:n]); ferr != nil {
			return k, ferr
		}
	}
	return n, err
}

// recordBounded reads no further than the end of the current TLS record,
// so crypto/tls, reading the first ClientHello, takes only its records and
// not what the guest sent after them.
type recordBounded struct {
	r    io.Reader
	hdr  [recordHeaderLen]byte
	nhdr int
	left int
}

func (rb *recordBounded) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	want := rb.left
	if want == 0 {
		want = recordHeaderLen - rb.nhdr
	}
	n, err := rb.r.Read(b[:min(len(b), want)])
	if rb.left > 0 {
		rb.left -= n
		return n, err
	}
	rb.nhdr += copy(rb.hdr[rb.nhdr:], b[:n])
	if rb.nhdr == recordHeaderLen {
		rb.nhdr, rb.left = 0, int(rb.hdr[3])<<8|int(rb.hdr[4])
	}
	return n, err
}
