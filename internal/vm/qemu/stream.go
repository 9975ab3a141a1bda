package qemu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// dropZeroPages copies a QEMU 7.2 migration stream (precopy, saved with no
// capability but its defaults) from r to w, leaving out the pages of the
// RAM block called block that it sends as zero. QEMU's loader reads every
// such page to see if it is zero already, and a read of a hole in a
// file-backed RAM mapping allocates and zeroes a page: for a 2 GiB guest
// that is 2 GiB of page cache and seconds. A fresh file is zero there
// anyway. Every other record is copied as it is; a record that followed
// a dropped one names its block again instead of "the same block as
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
func dropZeroPages(r io.Reader, w io.Writer, block string) (dropped int64, err error) {
	s := &streamFilter{in: bufio.NewReaderSize(r, 1<<20), out: bufio.NewWriterSize(w, 1<<20), block: block, pageSize: 4096}
	err = s.run()
	if ferr := s.out.Flush(); err == nil {
		err = ferr
	}
	return s.dropped, err
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
	in       *bufio.Reader
	out      *bufio.Writer
	block    string
	pageSize uint64
	dropped  int64

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
	for {
		typ, err := s.in.ReadByte()
		if err != nil {
			return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
		}
		switch typ {
		case secConfiguration:
			s.out.WriteByte(typ)
			if err := s.configuration(); err != nil {
				return err
			}
			continue // the configuration has no footer
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
				s.putStr(s.str())
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
		switch {
		case flags&ramMemSize != 0:
			if !start || s.totalSeen {
				return errors.New("migration stream: a RAM block list outside RAM's start")
			}
			s.totalSeen = true
			s.put64(h)
			for total := addr; total > 0; {
				s.putStr(s.str())
				n := s.be64()
				if err := s.err(); err != nil {
					return err
				}
				if n == 0 || n > total {
					return fmt.Errorf("migration stream: a RAM block of %d bytes in %d left", n, total)
				}
				s.put64(n)
				total -= n
			}
		case flags&ramEOS != 0:
			s.put64(h)
			return s.err()
		case flags&(ramZero|ramPage) != 0:
			if flags&ramZero != 0 && flags&ramPage != 0 {
				return errors.New("migration stream: a RAM record both zero and a page")
			}
			if flags&ramContinue == 0 {
				s.cur = s.str()
			} else if s.cur == "" {
				return errors.New("migration stream: a RAM record continues no block")
			}
			if flags&ramZero != 0 {
				fill, err := s.in.ReadByte()
				if err != nil {
					return fmt.Errorf("migration stream: %w", unexpectedEOF(err))
				}
				if fill == 0 && s.cur == s.block {
					s.dropped++
					continue
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
