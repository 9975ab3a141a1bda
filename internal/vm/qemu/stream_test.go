package qemu

import (
	"bytes"
	"encoding/binary"
	"fmt"
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

func TestDropZeroPagesLeavesOutOnlyTheGuestRAMsZeroPages(t *testing.T) {
	in := [][]rec{
		{{block: "mem", addr: 0, zero: true}, {block: "mem", addr: 0x1000, page: 7}, {block: "mem", addr: 0x2000, zero: true},
			{block: "pc.bios", addr: 0, zero: true}, {block: "mem", addr: 0x3000, zero: true, fill: 9}},
		// A section that starts with a dropped record, then one of the same block.
		{{block: "mem", addr: 0x3000, zero: true}, {block: "mem", addr: 0x2000, page: 1}},
		{{block: "mem", addr: 0x1000, zero: true}},
	}
	for _, pageBits := range []bool{false, true} {
		src := build(in, pageBits)
		var out bytes.Buffer
		dropped, err := dropZeroPages(bytes.NewReader(src), &out, "mem")
		if err != nil {
			t.Fatal(err)
		}
		got, rest := parse(t, out.Bytes())
		want := []rec{{block: "mem", addr: 0x1000, page: 7}, {block: "pc.bios", addr: 0, zero: true}, {block: "mem", addr: 0x3000, zero: true, fill: 9}, {block: "mem", addr: 0x2000, page: 1}}
		if fmt.Sprint(got) != fmt.Sprint(want) || dropped != 4 {
			t.Errorf("records %v (dropped %d), want %v (4)", got, dropped, want)
		}
		_, srcRest := parse(t, src)
		if !bytes.Equal(rest, srcRest) {
			t.Errorf("the device sections changed: %q, want %q", rest, srcRest)
		}
	}
}

// Every cut of the stream is an error, never a panic or a silent success;
// so is every kind of record or section the filter does not know.
func TestDropZeroPagesRefusesWhatItDoesNotKnow(t *testing.T) {
	src := build([][]rec{{{block: "mem", addr: 0, zero: true}, {block: "mem", addr: 0x1000, page: 7}}}, true)
	end := bytes.Index(src, []byte{secFull, 0, 0, 0, 3})
	for n := 0; n < end; n += 1 + n%7*(n/512) {
		if _, err := dropZeroPages(bytes.NewReader(src[:n]), &bytes.Buffer{}, "mem"); err == nil {
			t.Fatalf("a stream cut at %d of %d passed", n, len(src))
		}
	}
	bad := func(name string, edit func([]byte) []byte, want string) {
		t.Run(name, func(t *testing.T) {
			_, err := dropZeroPages(bytes.NewReader(edit(append([]byte(nil), src...))), &bytes.Buffer{}, "mem")
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
}
