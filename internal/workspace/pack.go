package workspace

import (
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits bound what one VM's pack may cost the host: the bytes it sends
// and, since a few KiB of zlib can inflate to gigabytes, what its objects
// inflate to. A delta counts with the size it says its result has: that
// is what index-pack allocates when it resolves it.
type Limits struct {
	Pack    int64 // bytes of pack
	Objects int64 // objects in it (index-pack allocates per object up front)
	Blob    int64 // one whole blob, inflated (index-pack streams blobs above Object)
	Object  int64 // one commit, tree or tag, or one delta's data, base or result, inflated: held whole in memory
	Total   int64 // every object together, inflated
}

// MaxPackObjects is how many objects one collect takes: a few times what a
// large project's whole history has.
const MaxPackObjects = 1 << 23

// MaxHeldObject caps what index-pack holds in memory for one object. git
// itself never deltifies or stores whole anything above core.bigFileThreshold
// (512 MiB by default), so no honest pack needs more.
const MaxHeldObject = 512 << 20

// PackLimits are the limits of a collect that may read max bytes.
func PackLimits(max int64) Limits {
	return Limits{Pack: max, Objects: MaxPackObjects, Blob: max, Object: min(max, MaxHeldObject), Total: 4 * max}
}

// Pack object types.
const (
	objCommit   = 1
	objTree     = 2
	objBlob     = 3
	objTag      = 4
	objOfsDelta = 6
	objRefDelta = 7
)

// ErrInflate says the objects in a VM's pack inflate past a limit.
var ErrInflate = fmt.Errorf("the VM's pack inflates %w", ErrTooLarge)

// checkPack copies a pack stream from r to w and stops at the first object
// that breaks l, before w has seen that object's header. Each object is
// inflated into nothing, only to find where it ends and to check that it
// is the size its header says; a delta's first bytes give the sizes of its
// base and result. Memory stays bounded whatever the pack says.
func checkPack(r io.Reader, w io.Writer, l Limits, hashLen int) error {
	p := newPassReader(r, w, l.Pack)
	err := p.check(l, hashLen)
	if p.over {
		return fmt.Errorf("the VM's pack is %w (%d MiB; raise it with --max-size)", ErrTooLarge, l.Pack>>20)
	}
	if err != nil {
		return err
	}
	return p.flush()
}

func (p *passReader) check(l Limits, hashLen int) error {
	var hdr [12]byte
	if _, err := io.ReadFull(p, hdr[:]); err != nil {
		return fmt.Errorf("read the VM's pack header: %w", err)
	}
	if string(hdr[:4]) != "PACK" {
		return errors.New("the VM did not send a git pack")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 && v != 3 {
		return fmt.Errorf("the VM's pack has version %d", v)
	}
	count := int64(binary.BigEndian.Uint32(hdr[8:12]))
	if count > l.Objects {
		return fmt.Errorf("%w: %d objects, more than %d", ErrInflate, count, l.Objects)
	}
	var total int64
	add := func(n int64) error {
		if total += n; total > l.Total {
			return fmt.Errorf("%w: its objects together to more than %d MiB (raise it with --max-size)", ErrInflate, l.Total>>20)
		}
		return nil
	}
	limit := func(i, n, max int64, what string) error {
		if n > max {
			return fmt.Errorf("%w: object %d (%s) to %d MiB, more than %d MiB (raise it with --max-size, up to %d MiB for anything but a whole blob)",
				ErrInflate, i, what, n>>20, max>>20, MaxHeldObject>>20)
		}
		return nil
	}
	for i := int64(0); i < count; i++ {
		// The object before passed whole: index-pack may have it all.
		if err := p.flush(); err != nil {
			return err
		}
		p.hold = true
		typ, size, err := objectHeader(p)
		if err != nil {
			return fmt.Errorf("object %d of the VM's pack: %w", i, err)
		}
		switch typ {
		case objBlob:
			err = first(limit(i, size, l.Blob, "a blob"), add(size))
		case objCommit, objTree, objTag:
			err = first(limit(i, size, l.Object, "a commit, tree or tag"), add(size))
		case objOfsDelta:
			err = first(limit(i, size, l.Object, "a delta"), skipOffset(p))
		case objRefDelta:
			_, err = io.ReadFull(p, make([]byte, hashLen))
			err = first(limit(i, size, l.Object, "a delta"), err)
		default:
			err = fmt.Errorf("object %d of the VM's pack has type %d", i, typ)
		}
		if err != nil {
			return err
		}
		// The header passed: index-pack may see it and the data.
		p.hold = false
		if err := p.flush(); err != nil {
			return err
		}
		zr, err := zlib.NewReader(p)
		if err != nil {
			return fmt.Errorf("object %d of the VM's pack: %w", i, err)
		}
		data := &countReader{r: io.LimitReader(zr, size+1)}
		if typ == objOfsDelta || typ == objRefDelta {
			base, berr := deltaSize(data)
			result, rerr := deltaSize(data)
			if err := first(berr, rerr); err != nil {
				return fmt.Errorf("object %d of the VM's pack: a delta's header: %w", i, err)
			}
			if err := first(limit(i, base, l.Object, "a delta's base"), limit(i, result, l.Object, "a delta's result"), add(result)); err != nil {
				return err
			}
		}
		if _, err := io.Copy(io.Discard, data); err != nil {
			return fmt.Errorf("object %d of the VM's pack: %w", i, err)
		}
		if data.n != size {
			return fmt.Errorf("%w: object %d inflates to other than the %d bytes it declares", ErrInflate, i, size)
		}
	}
	if err := p.flush(); err != nil {
		return err
	}
	p.hold = true
	if _, err := io.ReadFull(p, make([]byte, hashLen)); err != nil {
		return fmt.Errorf("read the VM's pack checksum: %w", err)
	}
	return nil
}

// first is the first non-nil error.
func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// objectHeader reads a pack object's type and inflated size.
func objectHeader(r io.ByteReader) (typ int, size int64, err error) {
	c, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	typ, size = int(c>>4&7), int64(c&15)
	for shift := 4; c&0x80 != 0; shift += 7 {
		if shift > 55 {
			return 0, 0, errors.New("object size does not fit 63 bits")
		}
		if c, err = r.ReadByte(); err != nil {
			return 0, 0, err
		}
		size |= int64(c&0x7f) << shift
	}
	return typ, size, nil
}

// skipOffset reads an OFS_DELTA's base offset.
func skipOffset(r io.ByteReader) error {
	for n := 0; ; n++ {
		c, err := r.ReadByte()
		if err != nil {
			return err
		}
		if c&0x80 == 0 {
			return nil
		}
		if n > 8 {
			return errors.New("delta base offset does not fit 63 bits")
		}
	}
}

// deltaSize reads one of the two sizes a delta starts with.
func deltaSize(r io.Reader) (int64, error) {
	var size int64
	var b [1]byte
	for shift := 0; ; shift += 7 {
		if shift > 56 {
			return 0, errors.New("size does not fit 63 bits")
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		size |= int64(b[0]&0x7f) << shift
		if b[0]&0x80 == 0 {
			return size, nil
		}
	}
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

const passChunk = 64 << 10

// passReader hands dst exactly the bytes read from it, once they are
// checked: while hold is set (an object header is being read) they wait.
// It is a flate.Reader, so zlib reads no further than each stream's end,
// and its own buffer, so reading a byte costs no call.
type passReader struct {
	src  io.Reader
	dst  io.Writer
	buf  []byte // buf[done:pos]: read, not yet passed on; buf[pos:end]: not yet read
	done int
	pos  int
	end  int
	hold bool
	left int64 // bytes of pack still allowed
	over bool  // the pack was larger than allowed
}

func newPassReader(src io.Reader, dst io.Writer, max int64) *passReader {
	return &passReader{src: src, dst: dst, buf: make([]byte, passChunk), left: max, hold: true}
}

func (p *passReader) ReadByte() (byte, error) {
	if p.pos == p.end {
		if err := p.fill(); err != nil {
			return 0, err
		}
	}
	if p.left <= 0 {
		p.over = true
		return 0, ErrTooLarge
	}
	b := p.buf[p.pos]
	p.pos++
	p.left--
	return b, nil
}

func (p *passReader) Read(q []byte) (int, error) {
	if p.pos == p.end {
		if err := p.fill(); err != nil {
			return 0, err
		}
	}
	if p.left <= 0 {
		p.over = true
		return 0, ErrTooLarge
	}
	n := copy(q[:min(int64(len(q)), p.left)], p.buf[p.pos:p.end])
	p.pos += n
	p.left -= int64(n)
	return n, nil
}

// fill reads more of src, first passing on what was read (unless held).
func (p *passReader) fill() error {
	if !p.hold {
		if err := p.flush(); err != nil {
			return err
		}
	}
	// Keep what waits to be passed on at the front.
	n := copy(p.buf, p.buf[p.done:p.end])
	p.pos -= p.done
	p.end, p.done = n, 0
	if p.end == len(p.buf) {
		p.buf = append(p.buf, make([]byte, len(p.buf))...)
	}
	for {
		m, err := p.src.Read(p.buf[p.end:])
		p.end += m
		if m > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// flush passes on everything read so far.
func (p *passReader) flush() error {
	if p.pos == p.done {
		return nil
	}
	_, err := p.dst.Write(p.buf[p.done:p.pos])
	p.done = p.pos
	if err != nil {
		return fmt.Errorf("%w: %w", errIndexPackDone, err)
	}
	return nil
}
