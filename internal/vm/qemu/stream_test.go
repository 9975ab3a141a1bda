package qemu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
)

// A migration stream built the way QEMU 7.2 writes one, for the filter.
type streamBuilder struct{ bytes.Buffer }

func (b *streamBuilder) u8(v byte)    { b.WriteByte(v) }
func (b *streamBuilder) u32(v uint32) { b.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (b *streamBuilder) u64(v uint64) { b.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (b *streamBuilder) str(s string) { b.u8(byte(len(s))); b.WriteString(s) }
func (b *streamBuilder) footer(id uint32) {
	b.u8(secFooter)
	b.u32(id)
}

// rec is one RAM record as a loader sees it (CONTINUE resolved).
type rec struct {
	block string
	addr  uint64
	zero  bool
	fill  byte
	page  byte // the page's first byte (pages are filled with it)
}

const testPage = 4096

// build writes a whole stream: the records go into one PART section (the
// first record of a section always names its block; later ones continue
// when the block is the same, as QEMU's saver does).
func build(parts [][]rec, pageBits bool) []byte {
	var b streamBuilder
	b.u32(streamMagic)
	b.u32(streamVersion)
	b.u8(secConfiguration)
	b.u32(uint32(len("pc-q35-7.2")))
	b.WriteString("pc-q35-7.2")
	if pageBits {
		b.u8(secSubsection)
		b.str("configuration/target-page-bits")
		b.u32(1)
		b.u32(12)
	}
	b.u8(secStart)
	b.u32(2)
	b.str("ram")
	b.u32(0)
	b.u32(4)
	b.u64(0x5000 | ramMemSize)
	b.str("mem")
	b.u64(0x4000)
	b.str("pc.bios")
	b.u64(0x1000)
	b.u64(ramEOS)
	b.footer(2)
	for i, recs := range parts {
		typ := byte(secPart)
		if i == len(parts)-1 {
			typ = secEnd
		}
		b.u8(typ)
		b.u32(2)
		last := ""
		for _, r := range recs {
			flags := uint64(ramPage)
			if r.zero {
				flags = ramZero
			}
			if r.block == last {
				b.u64(r.addr | flags | ramContinue)
			} else {
				b.u64(r.addr | flags)
				b.str(r.block)
			}
			last = r.block
			if r.zero {
				b.u8(r.fill)
			} else {
				b.Write(bytes.Repeat([]byte{r.page}, testPage))
			}
		}
		b.u64(ramEOS)
		b.footer(2)
	}
	b.u8(secFull)
	b.u32(3)
	b.str("timer")
	b.u32(0)
	b.u32(2)
	b.WriteString("device-bytes\x00\x01\x02")
	b.footer(3)
	b.u8(secEOF)
	b.u8(0x06)
	b.u32(2)
	b.WriteString("{}")
	return b.Bytes()
}

// parse reads a stream's RAM records back, as QEMU's loader would, and
// returns them with everything after RAM's end.
func parse(t *testing.T, s []byte) ([]rec, []byte) {
	t.Helper()
	r := bytes.NewReader(s)
	u8 := func() byte { c, _ := r.ReadByte(); return c }
	u32 := func() uint32 { var v uint32; binary.Read(r, binary.BigEndian, &v); return v }
	u64 := func() uint64 { var v uint64; binary.Read(r, binary.BigEndian, &v); return v }
	str := func() string { n := u8(); b := make([]byte, n); r.Read(b); return string(b) }
	u32()
	u32()
	u8()
	n := u32()
	r.Read(make([]byte, n))
	if c, _ := r.ReadByte(); c == secSubsection {
		str()
		u32()
		u32()
	} else {
		r.UnreadByte()
	}
	var out []rec
	cur := ""
	for {
		typ := u8()
		if typ == secFull {
			r.UnreadByte()
			rest := make([]byte, r.Len())
			r.Read(rest)
			return out, rest
		}
		u32()
		if typ == secStart {
			str()
			u32()
			u32()
		}
		cur = ""
		for {
			h := u64()
			flags, addr := h&(testPage-1), h&^uint64(testPage-1)
			if flags&ramEOS != 0 {
				break
			}
			if flags&ramMemSize != 0 {
				for total := addr; total > 0; {
					str()
					total -= u64()
				}
				continue
			}
			if flags&ramContinue == 0 {
				cur = str()
			} else if cur == "" {
				t.Fatalf("the output continues a block at the start of a section: %x", h)
			}
			x := rec{block: cur, addr: addr, zero: flags&ramZero != 0}
			if x.zero {
				x.fill = u8()
			} else {
				p := make([]byte, testPage)
				r.Read(p)
				x.page = p[0]
			}
			out = append(out, x)
		}
		if u8() != secFooter {
			t.Fatal("no footer")
		}
		u32()
	}
}

// memFile is an in-memory RAMFile that remembers its writes.
type memFile struct {
	b      []byte
	sized  bool
	writes int
}

func (m *memFile) Truncate(n int64) error { m.b, m.sized = make([]byte, n), true; return nil }
func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if !m.sized || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write of %d at %d past the size %d", len(p), off, len(m.b))
	}
	m.writes++
	return copy(m.b[off:], p), nil
}

// page is the RAM file's page at addr: its first byte if it is filled
// with it, else -1.
func (m *memFile) page(addr int) int {
	p := m.b[addr : addr+testPage]
	if !bytes.Equal(p, bytes.Repeat(p[:1], testPage)) {
		return -1
	}
	return int(p[0])
}

func TestSplitRAMPutsTheGuestRAMsPagesInItsFile(t *testing.T) {
	in := [][]rec{
		{{block: "mem", addr: 0, zero: true}, {block: "mem", addr: 0x1000, page: 7}, {block: "mem", addr: 0x2000, zero: true},
			{block: "pc.bios", addr: 0, zero: true}, {block: "mem", addr: 0x3000, zero: true, fill: 9}},
		// A section that starts with a left-out record, then one of the
		// same block; a page sent again, as zero, after it was written.
		{{block: "mem", addr: 0x2000, page: 1}, {block: "pc.bios", addr: 0, page: 5}},
		{{block: "mem", addr: 0x1000, zero: true}},
	}
	for _, pageBits := range []bool{false, true} {
		src := build(in, pageBits)
		var out bytes.Buffer
		ram := &memFile{}
		st, err := splitRAM(bytes.NewReader(src), &out, ram, "mem", 0x4000)
		if err != nil {
			t.Fatal(err)
		}
		got, rest := parse(t, out.Bytes())
		want := []rec{{block: "pc.bios", addr: 0, zero: true}, {block: "pc.bios", addr: 0, page: 5}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("the state's RAM records %v, want only the other block's %v", got, want)
		}
		if len(ram.b) != 0x4000 {
			t.Fatalf("the RAM file is %d bytes, want the block's 0x4000", len(ram.b))
		}
		for addr, want := range map[int]int{0: 0, 0x1000: 0, 0x2000: 1, 0x3000: 9} {
			if got := ram.page(addr); got != want {
				t.Errorf("RAM page %#x holds %d, want %d", addr, got, want)
			}
		}
		// Two zero pages stay holes; the page that was 7 is zeroed when
		// sent again as zero.
		if st.ZeroPages != 2 || st.Pages != 4 {
			t.Errorf("stats %+v, want 4 pages written and 2 left as holes", st)
		}
		_, srcRest := parse(t, src)
		if !bytes.Equal(rest, srcRest) {
			t.Errorf("the device sections changed: %q, want %q", rest, srcRest)
		}
		caps, err := stateCapabilities(bytes.NewReader(out.Bytes()))
		if err != nil || len(caps) != 0 {
			t.Errorf("capabilities %v, %v; want none", caps, err)
		}
	}
}

// Adjacent pages go to the file in one write.
func TestSplitRAMWritesRunsOfPagesTogether(t *testing.T) {
	var recs []rec
	for i := 0; i < 4; i++ {
		recs = append(recs, rec{block: "mem", addr: uint64(i) * testPage, page: byte(i + 1)})
	}
	ram := &memFile{}
	if _, err := splitRAM(bytes.NewReader(build([][]rec{recs}, true)), io.Discard, ram, "mem", 0x4000); err != nil {
		t.Fatal(err)
	}
	if ram.writes != 1 || ram.page(3*testPage) != 4 {
		t.Errorf("%d writes (page 3 holds %d), want 1 (4)", ram.writes, ram.page(3*testPage))
	}
}

func TestStateCapabilitiesReadsIgnoreShared(t *testing.T) {
	var b streamBuilder
	b.u32(streamMagic)
	b.u32(streamVersion)
	b.u8(secConfiguration)
	b.u32(uint32(len("pc-q35-7.2")))
	b.WriteString("pc-q35-7.2")
	b.u8(secSubsection)
	b.str("configuration/capabilities")
	b.u32(1)
	b.u32(1)
	b.str("x-ignore-shared")
	b.u8(secStart)
	caps, err := stateCapabilities(bytes.NewReader(b.Bytes()))
	if err != nil || fmt.Sprint(caps) != "[x-ignore-shared]" {
		t.Fatalf("capabilities %v, %v", caps, err)
	}
	for _, bad := range [][]byte{nil, []byte("QEVM"), b.Bytes()[:9], append(b.Bytes()[:8:8], secStart)} {
		if _, err := stateCapabilities(bytes.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// Every cut of the stream is an error, never a panic or a silent success;
// so is every kind of record or section the filter does not know.
func TestSplitRAMRefusesWhatItDoesNotKnow(t *testing.T) {
	src := build([][]rec{{{block: "mem", addr: 0, zero: true}, {block: "mem", addr: 0x1000, page: 7}}}, true)
	end := bytes.Index(src, []byte{secFull, 0, 0, 0, 3})
	for n := 0; n < end; n += 1 + n%7*(n/512) {
		if _, err := splitRAM(bytes.NewReader(src[:n]), &bytes.Buffer{}, &memFile{}, "mem", 0x4000); err == nil {
			t.Fatalf("a stream cut at %d of %d passed", n, len(src))
		}
	}
	bad := func(name string, edit func([]byte) []byte, want string) {
		t.Run(name, func(t *testing.T) {
			_, err := splitRAM(bytes.NewReader(edit(append([]byte(nil), src...))), &bytes.Buffer{}, &memFile{}, "mem", 0x4000)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err %v, want %q", err, want)
			}
		})
	}
	bad("magic", func(b []byte) []byte { b[0] = 'X'; return b }, "not a QEMU migration stream")
	bad("version", func(b []byte) []byte { b[7] = 4; return b }, "version 4")
	bad("unknown subsection", func(b []byte) []byte {
		return bytes.Replace(b, []byte("configuration/target-page-bits"), []byte("configuration/target-page-bitz"), 1)
	}, "unknown configuration part")
	bad("compressed page", func(b []byte) []byte {
		i := bytes.Index(b, []byte{0, 0, 0, 0, 0, 0, 0x10, 0x28}) // mem@0x1000 PAGE|CONTINUE
		b[i+6] |= 0x01                                            // + COMPRESS_PAGE (0x100)
		return b
	}, "flags")
	bad("device before RAM's end", func(b []byte) []byte {
		i := bytes.Index(b, []byte{secEnd, 0, 0, 0, 2})
		b[i] = secFull
		return b
	}, "before RAM's end")
	bad("continue with no block", func(b []byte) []byte {
		i := bytes.Index(b, append([]byte{0, 0, 0, 0, 0, 0, 0, ramZero, 3}, "mem"...))
		return append(append(b[:i:i], 0, 0, 0, 0, 0, 0, 0, ramZero|ramContinue), b[i+12:]...)
	}, "continues no block")
	bad("huge block list", func(b []byte) []byte {
		i := bytes.Index(b, []byte{0, 0, 0, 0, 0, 0, 0x50, ramMemSize})
		b[i+6] = 0x60 // the blocks add up to less than the total
		return b
	}, "RAM block")
	bad("a page past the block", func(b []byte) []byte {
		i := bytes.Index(b, []byte{0, 0, 0, 0, 0, 0, 0x10, 0x28}) // mem@0x1000 PAGE|CONTINUE
		b[i+5] = 0x50                                             // mem@0x501000
		return b
	}, "of a 16384-byte block")
	bad("a block of another size", func(b []byte) []byte {
		i := bytes.Index(b, []byte("\x03mem\x00"))
		b[i+10] = 0x50 // 0x5000 of the list's 0x5000, the other block's 0x1000 gone
		return b
	}, "want 16384")
	bad("a second configuration", func(b []byte) []byte {
		i := bytes.Index(b, []byte{secEnd, 0, 0, 0, 2})
		conf := b[8:bytes.Index(b, []byte{secStart, 0, 0, 0, 2})]
		return append(append(b[:i:i], conf...), b[i:]...)
	}, "unknown section type 0x7")
	bad("zero and a block list at once", func(b []byte) []byte {
		i := bytes.Index(b, []byte{0, 0, 0, 0, 0, 0, 0x50, ramMemSize})
		b[i+7] |= ramZero
		return b
	}, "flags 0x6")
	bad("a page of a block named nothing", func(b []byte) []byte {
		i := bytes.Index(b, append([]byte{0, 0, 0, 0, 0, 0, 0, ramZero, 3}, "mem"...))
		return append(append(b[:i+8:i+8], 0), b[i+12:]...)
	}, "names no block")
	bad("no configuration", func(b []byte) []byte {
		b[8] = secStart
		return b
	}, "no configuration")
	bad("saved with x-ignore-shared", func(b []byte) []byte {
		var c streamBuilder
		c.u8(secSubsection)
		c.str("configuration/capabilities")
		c.u32(1)
		c.u32(1)
		c.str("x-ignore-shared")
		i := bytes.Index(b, []byte{secStart, 0, 0, 0, 2})
		return append(append(b[:i:i], c.Bytes()...), b[i:]...)
	}, "saved with x-ignore-shared")
	bad("no block list", func(b []byte) []byte {
		// A RAM START and END with nothing in them, then the devices.
		var e streamBuilder
		e.Write(b[:bytes.Index(b, []byte{secStart, 0, 0, 0, 2})])
		e.u8(secStart)
		e.u32(2)
		e.str("ram")
		e.u32(0)
		e.u32(4)
		e.u64(ramEOS)
		e.footer(2)
		e.u8(secEnd)
		e.u32(2)
		e.u64(ramEOS)
		e.footer(2)
		e.Write(b[bytes.Index(b, []byte{secFull, 0, 0, 0, 3}):])
		return e.Bytes()
	}, "without its block list")
	bad("no such block", func(b []byte) []byte {
		return bytes.Replace(b, []byte("\x03mem\x00"), []byte("\x03meh\x00"), 1)
	}, `no RAM block "mem"`)
}

// keepRAM keeps of the guest RAM's block only the pages it is told,
// zero pages too (a kept zero page overwrites what the file holds), in
// the order they came, and the other blocks and the devices whole.
func TestKeepRAMKeepsOnlyTheChosenPages(t *testing.T) {
	in := [][]rec{
		{{block: "mem", addr: 0, page: 3}, {block: "mem", addr: 0x1000, page: 7}, {block: "pc.bios", addr: 0, zero: true},
			{block: "mem", addr: 0x2000, zero: true}, {block: "mem", addr: 0x3000, zero: true, fill: 9}},
		// A section that starts with a left-out record: the kept one after
		// it names its block again.
		{{block: "mem", addr: 0x1000, page: 8}, {block: "mem", addr: 0x2000, page: 1}, {block: "pc.bios", addr: 0, page: 5}},
	}
	keep := map[uint64]bool{0x2000: true, 0x3000: true}
	src := build(in, true)
	var out bytes.Buffer
	st, err := keepRAM(bytes.NewReader(src), &out, "mem", 0x4000, func(off uint64) bool { return keep[off] })
	if err != nil {
		t.Fatal(err)
	}
	got, rest := parse(t, out.Bytes())
	want := []rec{{block: "pc.bios", addr: 0, zero: true}, {block: "mem", addr: 0x2000, zero: true}, {block: "mem", addr: 0x3000, zero: true, fill: 9},
		{block: "mem", addr: 0x2000, page: 1}, {block: "pc.bios", addr: 0, page: 5}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the state's RAM records\n%v, want\n%v", got, want)
	}
	if st.Pages != 3 || st.Dropped != 3 {
		t.Errorf("stats %+v, want 3 kept and 3 dropped", st)
	}
	_, srcRest := parse(t, src)
	if !bytes.Equal(rest, srcRest) {
		t.Errorf("the device sections changed: %q, want %q", rest, srcRest)
	}
	// A page past the block, or one before the block list, is refused as
	// splitRAM refuses it.
	bad := build([][]rec{{{block: "mem", addr: 0x4000, page: 1}}}, true)
	if _, err := keepRAM(bytes.NewReader(bad), io.Discard, "mem", 0x4000, func(uint64) bool { return true }); err == nil {
		t.Error("a page past the block was copied")
	}
	if _, err := keepRAM(bytes.NewReader(src), io.Discard, "mem", 0x8000, func(uint64) bool { return true }); err == nil {
		t.Error("a block of another size was taken")
	}
}
