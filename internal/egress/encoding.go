package egress

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"net/http"
	"strings"
)

// decodeBody is resp's body as the meter can read it. The proxy asks the
// upstream for no encoding; one that encodes anyway with gzip or deflate
// is decoded here, and the guest gets the decoded answer. Any other
// encoding (br, zstd, a list of several) passes to the guest untouched
// and is unreadable: it tells no usage, so the call keeps its reservation.
func decodeBody(resp *http.Response) (body io.ReadCloser, unreadable bool) {
	enc := resp.Header.Values("Content-Encoding")
	if len(enc) == 0 {
		return resp.Body, false
	}
	var open func(io.Reader) (io.Reader, error)
	switch e := strings.ToLower(strings.TrimSpace(enc[0])); {
	case len(enc) > 1:
		return resp.Body, true
	case e == "" || e == "identity":
		return resp.Body, false
	case e == "gzip" || e == "x-gzip":
		open = func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
	case e == "deflate":
		open = openDeflate
	default:
		return resp.Body, true
	}
	resp.Header.Del("Content-Encoding")
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Uncompressed = true
	return &decodedBody{src: resp.Body, open: open}, false
}

// openDeflate reads HTTP's deflate: zlib as the standard says, or the
// raw deflate some servers send.
func openDeflate(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	h, _ := br.Peek(2)
	if len(h) == 2 && h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
		return zlib.NewReader(br)
	}
	return flate.NewReader(br), nil
}

// decodedBody decodes on first read, so a slow upstream does not hold the
// response headers back.
type decodedBody struct {
	src  io.ReadCloser
	open func(io.Reader) (io.Reader, error)
	r    io.Reader
	err  error
}

func (d *decodedBody) Read(b []byte) (int, error) {
	if d.r == nil && d.err == nil {
		d.r, d.err = d.open(d.src)
	}
	if d.err != nil {
		// A broken encoding is not a clean end: the call keeps its
		// reservation.
		if d.err == io.EOF {
			d.err = io.ErrUnexpectedEOF
		}
		return 0, d.err
	}
	return d.r.Read(b)
}

func (d *decodedBody) Close() error { return d.src.Close() }
