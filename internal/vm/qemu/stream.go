package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// splitRAM splits a QEMU 7.2 migration stream (precopy, saved with no
// capability but its defaults) read from r in two: the pages of the RAM
// block called block, of size bytes, go into ram, a fresh empty file, at
// their offsets (it is sized to the block; the pages sent as zero stay
// holes), and
// everything else goes to state. state is then a stream a QEMU whose RAM
// maps that file loads as it is (with x-ignore-shared off, as it was
// saved): its RAM section lists the blocks and holds the other blocks'
// pages only. Loading it reads no guest page, where the whole stream
// would make QEMU's loader read every page sent as zero, and a read of a
// hole in a file-backed RAM mapping allocates and zeroes a page (2 GiB of
// page cache and seconds for a 2 GiB guest). A record that followed a
// left-out one names its block again instead of "the same block as
// before". Anything this reader does not know ends the copy with an error.
//
// The format (migration/savevm.c, migration/ram.c): a magic and version;
// the configuration (the machine type and its subsections); sections,
// each a type byte, an id and (START, FULL) a name, instance and version,
// a payload and a footer. RAM's START, PART and END payloads are records:
// a be64 of page address | flags, the block's name unless CONTINUE, and
// the page (PAGE), one fill byte (ZERO) or the block list (MEM_SIZE),
// ending with EOS. Devices' FULL sections come after RAM's END and are
// copied through untouched.
func splitRAM(r io.Reader, state io.Writer, ram RAMFile, block string, size uint64) (SplitStats, error) {
	s := &streamFilter{in: bufio.NewReaderSize(r, 1<<20), out: bufio.NewWriterSize(state, 1<<20), block: block, blockSize: size, pageSize: 4096,
		ram: &pageWriter{f: ram, buf: make([]byte, 0, 1<<20)}}
	err := s.run()
	if ferr := s.out.Flush(); err == nil {
		err = ferr
	}
	if ferr := s.ram.flush(); err == nil && ferr != nil {
		err = fmt.Errorf("write the RAM file: %w", ferr)
	}
	return s.stats, err
}

// keepRAM copies a migration stream of the same kind from r to state,
// with of the RAM block called block (of size bytes) only the pages keep
// names by their offset in it, zero pages included; the other blocks'
// pages and the devices are copied whole. Loaded into a QEMU whose RAM
// maps the file the source mapped privately, it writes just the pages the
// source had made its own (see Compact), so the new process shares every
// other page with the file's other mappers.
func keepRAM(r io.Reader, state io.Writer, block string, size uint64, keep func(off uint64) bool) (SplitStats, error) {
	s := &streamFilter{in: bufio.NewReaderSize(r, 1<<20), out: bufio.NewWriterSize(state, 1<<20), block: block, blockSize: size, pageSize: 4096, keep: keep}
	err := s.run()
	if ferr := s.out.Flush(); err == nil {
		err = ferr
	}
	return s.stats, err
}

// RAMFile is where splitRAM puts the guest RAM's pages (an *os.File).
type RAMFile interface {
	io.WriterAt
	Truncate(size int64) error
}

// SplitStats counts what splitRAM or keepRAM did with the guest RAM's
// pages.
type SplitStats struct {
	Pages, ZeroPages int64 // written to the RAM file (kept); left as holes
	Dropped          int64 // left out by keepRAM
}

// stateCapabilities reads the migration capabilities a saved state's
// configuration says it was saved with (QEMU 7.2 lists the ones the
// loader must share, such as x-ignore-shared, which also changes the
// stream's layout).
func stateCapabilities(r io.Reader) ([]string, error) {
	s := &streamFilter{in: bufio.NewReaderSize(r, 4096), out: bufio.NewWriterSize(io.Discard, 4096), pageSize: 4096}
	if s.be32() != streamMagic {
		return nil, errors.New("not a QEMU migration stream")
	}
	if v := s.be32(); v != streamVersion {
		return nil, fmt.Errorf("migration stream version %d (known: %d)", v, streamVersion)
	}
	if typ, err := s.in.ReadByte(); err != nil || typ != secConfiguration {
		return nil, errors.New("migration stream: no configuration at its start")
	}
	if err := s.configuration(); err != nil {
		return nil, err
	}
	return s.caps, nil
}

const (
	streamMagic   = 0x5145564d
	streamVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secConfiguration = 0x07
	secFooter        = 0x7e

	ramMemSize  = 0x04
	ramZero     = 0x02
	ramPage     = 0x08
	ramEOS      = 0x10
	ramContinue = 0x20
	ramKnown    = ramMemSize | ramZero | ramPage | ramEOS | ramContinue
)

type streamFilter struct {
	in        *bufio.Reader
	out       *bufio.Writer
	block     string
	blockSize uint64 // what the block must be
	pageSize  uint64
	ram       *pageWriter           // splitRAM's file, or nil
	keep      func(off uint64) bool // keepRAM's choice, or nil
	blockLen  uint64                // the block's size, from the block list
	written   []uint64              // a bit per page of it already in the RAM file
	stats     SplitStats
	caps      []string

	ramID     uint32
	ramSeen   bool
	ramEnded  bool
	cur       string // the block the input's last record named
	emitted   string // the block the output's last record named
	buf       []byte
	totalSeen bool
	rerr      error
}

func (s *streamFilter) run() error {
	if s.be32() != streamMagic {
		return errors.New("not a QEMU migration stream")
	}
	if v := s.be32(); v != streamVersion {
		return fmt.Errorf("migration stream version %d (known: %d)", v, streamVersion)
	}
	s.put32(streamMagic)
	s.put32(streamVersion)
	// The configuration comes first, once (it sets the page size the
	// records are read with).
	if typ, err := s.in.ReadByte(); err != nil || typ != secConfiguration {
		return errors.New("migration stream: no configuration at its start")
	}
	s.out.WriteByte(secConfiguration)
	if err := s.configuration(); err != nil {
		return err
	}
	if slices.Contains(s.caps, "x-ignore-shared") {
		// Its block list has another layout, and the RAM is not in it.
		return errors.New("migration stream: saved with x-ignore-shared")
	}
	for {
		typ, err := s.in.ReadByte()
		if err != nil {
			return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
		}
		switch typ {
		case secStart, secFull:
			id := s.be32()
			name := s.str()
			inst, ver := s.be32(), s.be32()
			if typ == secFull || name != "ram" {
				if !s.ramEnded {
					return fmt.Errorf("migration stream: section %q before RAM's end", name)
				}
				s.out.WriteByte(typ)
				s.put32(id)
				s.putStr(name)
				s.put32(inst)
				s.put32(ver)
				return s.copyRest()
			}
			if s.ramSeen {
				return errors.New("migration stream: a second RAM section start")
			}
			s.ramSeen, s.ramID = true, id
			s.out.WriteByte(typ)
			s.put32(id)
			s.putStr(name)
			s.put32(inst)
			s.put32(ver)
			if err := s.ramPayload(true); err != nil {
				return err
			}
		case secPart, secEnd:
			id := s.be32()
			if !s.ramSeen || s.ramEnded || id != s.ramID {
				return fmt.Errorf("migration stream: section %d part outside RAM", id)
			}
			s.out.WriteByte(typ)
			s.put32(id)
			if err := s.ramPayload(false); err != nil {
				return err
			}
			s.ramEnded = typ == secEnd
			if s.ramEnded && s.written == nil {
				return errors.New("migration stream: RAM ended without its block list")
			}
		case secEOF:
			if !s.ramEnded {
				return errors.New("migration stream: it ended before RAM's end")
			}
			s.out.WriteByte(typ)
			return s.copyRest()
		default:
			return fmt.Errorf("migration stream: unknown section type %#x", typ)
		}
		if err := s.footer(); err != nil {
			return err
		}
	}
}

// configuration copies the machine type and the subsections QEMU 7.2
// sends with it.
func (s *streamFilter) configuration() error {
	n := s.be32()
	if n > 256 {
		return fmt.Errorf("migration stream: a machine type of %d bytes", n)
	}
	s.put32(n)
	s.copyN(int64(n))
	for {
		b, err := s.in.Peek(1)
		if err != nil {
			return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
		}
		if b[0] != secSubsection {
			return s.err()
		}
		s.in.ReadByte()
		s.out.WriteByte(secSubsection)
		name := s.str()
		s.putStr(name)
		s.put32(s.be32()) // its version
		switch name {
		case "configuration/target-page-bits":
			bits := s.be32()
			if bits < 10 || bits > 16 {
				return fmt.Errorf("migration stream: target page bits %d", bits)
			}
			s.pageSize = 1 << bits
			s.put32(bits)
		case "configuration/capabilities":
			n := s.be32()
			if n > 64 {
				return fmt.Errorf("migration stream: %d capabilities", n)
			}
			s.put32(n)
			for i := uint32(0); i < n; i++ {
				c := s.str()
				s.caps = append(s.caps, c)
				s.putStr(c)
			}
		default:
			return fmt.Errorf("migration stream: unknown configuration part %q", name)
		}
		if err := s.err(); err != nil {
			return err
		}
	}
}

// ramPayload filters one RAM section's records up to its EOS.
func (s *streamFilter) ramPayload(start bool) error {
	s.emitted = "" // the first record of a section always names its block
	mask := s.pageSize - 1
	for {
		h := s.be64()
		if err := s.err(); err != nil {
			return err
		}
		flags, addr := h&mask, h&^mask
		if flags&^ramKnown != 0 {
			return fmt.Errorf("migration stream: RAM record flags %#x (compression, xbzrle and RDMA are not expected)", flags)
		}
		// One kind per record, as QEMU's loader reads them.
		switch flags &^ ramContinue {
		case ramMemSize:
			if !start || s.totalSeen {
				return errors.New("migration stream: a RAM block list outside RAM's start")
			}
			s.totalSeen = true
			s.put64(h)
			for total := addr; total > 0; {
				name := s.str()
				s.putStr(name)
				n := s.be64()
				if err := s.err(); err != nil {
					return err
				}
				if n == 0 || n > total {
					return fmt.Errorf("migration stream: a RAM block of %d bytes in %d left", n, total)
				}
				if name == s.block {
					s.blockLen = n
				}
				s.put64(n)
				total -= n
			}
			if err := s.sizeRAM(); err != nil {
				return err
			}
		case ramEOS:
			s.put64(h)
			return s.err()
		case ramZero, ramPage:
			if flags&ramContinue == 0 {
				if s.cur = s.str(); s.cur == "" && s.rerr == nil {
					return errors.New("migration stream: a RAM record names no block")
				}
			} else if s.cur == "" {
				return errors.New("migration stream: a RAM record continues no block")
			}
			if s.cur == s.block {
				if err := s.ramPage(addr, flags&ramZero != 0); err != nil {
					return err
				}
				continue
			}
			if flags&ramZero != 0 {
				fill, err := s.in.ReadByte()
				if err != nil {
					return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
				}
				s.record(addr, flags)
				s.out.WriteByte(fill)
				continue
			}
			s.record(addr, flags)
			s.copyN(int64(s.pageSize))
		default:
			return fmt.Errorf("migration stream: a RAM record with flags %#x", flags)
		}
		if err := s.err(); err != nil {
			return err
		}
	}
}

// sizeRAM sizes the RAM file to the block, once the block list named it.
func (s *streamFilter) sizeRAM() error {
	if s.blockLen == 0 {
		return fmt.Errorf("migration stream: no RAM block %q in its block list", s.block)
	}
	if s.blockLen != s.blockSize || s.blockLen%s.pageSize != 0 {
		return fmt.Errorf("migration stream: the RAM block %q is %d bytes, want %d", s.block, s.blockLen, s.blockSize)
	}
	if s.ram == nil {
		// keepRAM: nothing to size.
	} else if err := s.ram.f.Truncate(int64(s.blockLen)); err != nil {
		return fmt.Errorf("size the RAM file: %w", err)
	}
	s.written = make([]uint64, (s.blockLen/s.pageSize+63)/64)
	return nil
}

// ramPage puts one page of the guest RAM's block into the RAM file. A
// page sent as zero stays a hole, unless an earlier record of this
// stream wrote it.
func (s *streamFilter) ramPage(addr uint64, zero bool) error {
	if s.written == nil {
		return errors.New("migration stream: a RAM page before the block list")
	}
	if addr >= s.blockLen {
		return fmt.Errorf("migration stream: a RAM page at %#x of a %d-byte block", addr, s.blockLen)
	}
	if s.keep != nil {
		return s.keptPage(addr, zero)
	}
	i := addr / s.pageSize
	seen := s.written[i/64]&(1<<(i%64)) != 0
	var page []byte
	if zero {
		fill, err := s.in.ReadByte()
		if err != nil {
			return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
		}
		if fill == 0 && !seen {
			s.stats.ZeroPages++
			return nil
		}
		page = bytes.Repeat([]byte{fill}, int(s.pageSize))
	} else if page = s.read(int(s.pageSize)); s.rerr != nil {
		return s.err()
	}
	s.written[i/64] |= 1 << (i % 64)
	s.stats.Pages++
	s.ram.write(int64(addr), page)
	return s.ram.err
}

// keptPage copies one page record of the guest RAM's block to the state
// if keep names it, and drops it if not.
func (s *streamFilter) keptPage(addr uint64, zero bool) error {
	var fill byte
	var page []byte
	if zero {
		b, err := s.in.ReadByte()
		if err != nil {
			return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
		}
		fill = b
	} else if page = s.read(int(s.pageSize)); s.rerr != nil {
		return s.err()
	}
	if !s.keep(addr) {
		s.stats.Dropped++
		return nil
	}
	s.stats.Pages++
	if zero {
		s.record(addr, ramZero)
		return s.out.WriteByte(fill)
	}
	s.record(addr, ramPage)
	_, err := s.out.Write(page)
	return err
}

// pageWriter writes pages to a file, runs of adjacent ones in one call,
// in the order they came (a later write of a page wins).
type pageWriter struct {
	f   RAMFile
	off int64
	buf []byte
	err error
}

func (w *pageWriter) write(off int64, p []byte) {
	if len(w.buf) > 0 && (off != w.off+int64(len(w.buf)) || len(w.buf)+len(p) > cap(w.buf)) {
		w.flush()
	}
	if len(w.buf) == 0 {
		w.off = off
	}
	w.buf = append(w.buf, p...)
}

func (w *pageWriter) flush() error {
	if w.err == nil && len(w.buf) > 0 {
		_, w.err = w.f.WriteAt(w.buf, w.off)
	}
	w.buf = w.buf[:0]
	return w.err
}

// record writes a page record's header, naming its block unless the
// output's previous record was of the same block.
func (s *streamFilter) record(addr, flags uint64) {
	flags &^= ramContinue
	if s.emitted == s.cur {
		s.put64(addr | flags | ramContinue)
		return
	}
	s.put64(addr | flags)
	s.putStr(s.cur)
	s.emitted = s.cur
}

func (s *streamFilter) footer() error {
	b, err := s.in.ReadByte()
	if err != nil {
		return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
	}
	if b != secFooter {
		return fmt.Errorf("migration stream: section footer %#x", b)
	}
	s.out.WriteByte(b)
	s.put32(s.be32())
	return s.err()
}

func (s *streamFilter) copyRest() error {
	if err := s.err(); err != nil {
		return err
	}
	_, err := io.Copy(s.out, s.in)
	return err
}

// Reading: the first error sticks (reads after it return zeros) and err
// reports it.
func (s *streamFilter) read(n int) []byte {
	if cap(s.buf) < n {
		s.buf = make([]byte, n)
	}
	b := s.buf[:n]
	if s.rerr == nil {
		if _, err := io.ReadFull(s.in, b); err != nil {
			s.rerr = unexpectedEOF(err)
		}
	}
	if s.rerr != nil {
		clear(b)
	}
	return b
}

func (s *streamFilter) be32() uint32 { return binary.BigEndian.Uint32(s.read(4)) }
func (s *streamFilter) be64() uint64 { return binary.BigEndian.Uint64(s.read(8)) }
func (s *streamFilter) str() string {
	n := s.read(1)[0]
	return string(s.read(int(n)))
}
func (s *streamFilter) copyN(n int64) {
	if s.rerr != nil {
		return
	}
	if _, err := io.CopyN(s.out, s.in, n); err != nil {
		s.rerr = unexpectedEOF(err)
	}
}
func (s *streamFilter) err() error {
	if s.rerr != nil {
		return fmt.Errorf("migration stream: %w", s.rerr)
	}
	return nil
}

func (s *streamFilter) put32(v uint32) { s.out.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (s *streamFilter) put64(v uint64) { s.out.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (s *streamFilter) putStr(v string) {
	s.out.WriteByte(byte(len(v)))
	s.out.WriteString(v)
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
