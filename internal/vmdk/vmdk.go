// Package vmdk judges a VMDK disk that fleet did not write before a
// hypervisor imports it: a VMDK's descriptor lists the files that hold
// its data ("extents"), and one that names a host file (RW 2048 FLAT
// "/etc/shadow") would have the import copy that file into the guest's
// disk. Fleet only ever carries one shape, the one qemu-img writes with
// subformat=streamOptimized: a binary sparse extent, compressed grains
// with markers, and an embedded descriptor whose one extent is the file
// itself. Check takes that shape and nothing else.
//
// The layout is VMware's "Virtual Disk Format 5.0" (SparseExtentHeader)
// as QEMU's block/vmdk.c and VirtualBox's VMDK.cpp read it.
package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// Sector is the unit of every offset and size in a sparse header.
const Sector = 512

// Magic starts a binary sparse extent ("KDMV" on disk).
const Magic = "KDMV"

// Header flags.
const (
	FlagNewlineTest   = 1 << 0  // the newline bytes below are valid
	FlagRedundantGT   = 1 << 1  // a redundant grain table is used
	FlagZeroGrain     = 1 << 2  // zeroed-grain table entries
	FlagCompressed    = 1 << 16 // grains are compressed
	FlagMarkers       = 1 << 17 // metadata markers are in the stream
	flagsKnown        = FlagNewlineTest | FlagRedundantGT | FlagZeroGrain | FlagCompressed | FlagMarkers
	streamOptimized   = FlagCompressed | FlagMarkers
	compressDeflate   = 1
	gdAtEnd           = ^uint64(0) // the grain directory is in the footer
	maxDescriptorEnd  = 2048       // sectors: the descriptor lies in the first MiB
	maxDescriptorText = 64 << 10
	// MaxCapacity is the largest virtual size (bytes) Check takes: far
	// beyond any image fleet bakes.
	MaxCapacity = 64 << 40
)

// HeadBytes is how much of a file's start Check may read: the header and
// the descriptor. With the last FooterBytes it is all Check reads.
const (
	HeadBytes   = maxDescriptorEnd * Sector
	FooterBytes = 2 * Sector // the footer header and the end-of-stream marker
)

// Header is a sparse extent header's fields that Check judges.
type Header struct {
	Version          uint32
	Flags            uint32
	Capacity         uint64 // sectors
	GrainSize        uint64 // sectors
	DescriptorOffset uint64 // sectors
	DescriptorSize   uint64 // sectors
	GDOffset         uint64 // sectors, or all ones: in the footer
	Compress         uint16
	newline          [4]byte
}

// Descriptor is what an embedded descriptor says, once judged.
type Descriptor struct {
	CreateType string
	Extent     Extent
}

// Extent is a descriptor's one extent line.
type Extent struct {
	Access  string // RW or RDONLY
	Sectors uint64
	Type    string // SPARSE
	File    string // the file itself, by its name when it was made
}

// ErrRefused is what every refusal wraps.
var ErrRefused = errors.New("refused VMDK")

type refusal struct{ reason string }

func (e *refusal) Error() string { return e.reason }
func (e *refusal) Unwrap() error { return ErrRefused }

func refuse(format string, args ...any) error {
	return &refusal{reason: fmt.Sprintf(format, args...)}
}

// Check judges the VMDK r holds, size bytes long: a streamOptimized
// sparse extent whose embedded descriptor (and footer, when its grain
// directory is at the end) names no other file. It reads at most the
// first HeadBytes and the last FooterBytes.
func Check(r io.ReaderAt, size int64) (*Header, *Descriptor, error) {
	var b [Sector]byte
	if n, err := r.ReadAt(b[:], 0); n < Sector {
		if n >= len("# Disk") && bytes.HasPrefix(b[:n], []byte("#")) {
			return nil, nil, refuse("it is a text descriptor, not a sparse extent: it would name other files")
		}
		return nil, nil, refuse("it is %d bytes, shorter than a sparse header (%v)", n, err)
	}
	h, err := ParseHeader(b[:])
	if err != nil {
		return nil, nil, err
	}
	end := h.DescriptorOffset + h.DescriptorSize
	if uint64(size) < end*Sector {
		return h, nil, refuse("its descriptor (sectors %d to %d) lies beyond its %d bytes", h.DescriptorOffset, end, size)
	}
	text := make([]byte, h.DescriptorSize*Sector)
	if _, err := r.ReadAt(text, int64(h.DescriptorOffset)*Sector); err != nil {
		return h, nil, fmt.Errorf("read its descriptor: %w", err)
	}
	d, err := ParseDescriptor(text)
	if err != nil {
		return h, nil, err
	}
	if d.Extent.Sectors != h.Capacity {
		return h, d, refuse("its extent has %d sectors but its header says %d", d.Extent.Sectors, h.Capacity)
	}
	if h.GDOffset == gdAtEnd {
		// The reader takes its header from the footer then: it must say
		// what the first one says, so the descriptor judged is the one read.
		if size < 3*Sector || size%Sector != 0 {
			return h, d, refuse("its grain directory is at the end but it has no footer")
		}
		if _, err := r.ReadAt(b[:], size-FooterBytes); err != nil {
			return h, d, fmt.Errorf("read its footer: %w", err)
		}
		f, err := ParseHeader(b[:])
		if err != nil {
			return h, d, refuse("its footer: %s", err.Error())
		}
		if f.DescriptorOffset != h.DescriptorOffset || f.DescriptorSize != h.DescriptorSize || f.Capacity != h.Capacity ||
			f.Flags != h.Flags || f.Version != h.Version || f.GrainSize != h.GrainSize {
			return h, d, refuse("its footer's header differs from its first one")
		}
		if f.GDOffset >= uint64(size)/Sector {
			return h, d, refuse("its footer's grain directory (sector %d) is outside the file", f.GDOffset)
		}
	} else if h.GDOffset >= uint64(size)/Sector {
		return h, d, refuse("its grain directory (sector %d) is outside the file", h.GDOffset)
	}
	return h, d, nil
}

// ParseHeader reads a 512-byte sparse extent header and checks that it is
// the streamOptimized kind: magic, version, flags, compression and a
// descriptor inside the file's first MiB.
func ParseHeader(b []byte) (*Header, error) {
	if len(b) < Sector {
		return nil, refuse("its header is %d bytes, not %d", len(b), Sector)
	}
	if string(b[:4]) != Magic {
		if bytes.HasPrefix(b, []byte("#")) {
			return nil, refuse("it is a text descriptor, not a sparse extent: it would name other files")
		}
		return nil, refuse("it does not start with the sparse extent magic %q", Magic)
	}
	le := binary.LittleEndian
	h := &Header{
		Version:          le.Uint32(b[4:]),
		Flags:            le.Uint32(b[8:]),
		Capacity:         le.Uint64(b[12:]),
		GrainSize:        le.Uint64(b[20:]),
		DescriptorOffset: le.Uint64(b[28:]),
		DescriptorSize:   le.Uint64(b[36:]),
		GDOffset:         le.Uint64(b[56:]),
		Compress:         le.Uint16(b[77:]),
	}
	copy(h.newline[:], b[73:77])
	switch {
	case h.Version < 1 || h.Version > 3:
		return h, refuse("its version %d is not 1, 2 or 3", h.Version)
	case h.Flags&^flagsKnown != 0:
		return h, refuse("it has flags %#x fleet does not know", h.Flags&^flagsKnown)
	case h.Flags&streamOptimized != streamOptimized:
		return h, refuse("it is not streamOptimized (flags %#x lack compressed grains and markers)", h.Flags)
	case h.Flags&FlagNewlineTest != 0 && h.newline != [4]byte{'\n', ' ', '\r', '\n'}:
		return h, refuse("its newline test bytes are damaged (a text transfer?)")
	case h.Compress != compressDeflate:
		return h, refuse("its compression %d is not deflate", h.Compress)
	case h.Capacity == 0 || h.Capacity > MaxCapacity/Sector:
		return h, refuse("its capacity of %d sectors is not one fleet takes", h.Capacity)
	case h.GrainSize < 1 || h.GrainSize > 2048 || h.GrainSize&(h.GrainSize-1) != 0:
		return h, refuse("its grain size of %d sectors is not a power of two up to 2048", h.GrainSize)
	case h.DescriptorOffset < 1 || h.DescriptorSize < 1 || h.DescriptorOffset > maxDescriptorEnd || h.DescriptorSize > maxDescriptorEnd-h.DescriptorOffset:
		return h, refuse("its descriptor (offset %d, %d sectors) is not inside its first MiB", h.DescriptorOffset, h.DescriptorSize)
	}
	return h, nil
}

var (
	// extentLine is ACCESS SECTORS TYPE "NAME" [OFFSET], VMware's order.
	extentLine = regexp.MustCompile(`^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$`)
	ddbLine    = regexp.MustCompile(`^(ddb\.[A-Za-z0-9.]+)\s*=\s*"([^"]*)"\s*$`)
	headerLine = regexp.MustCompile(`^([A-Za-z]+)\s*=\s*(.*?)\s*$`)
	// ownName is the name an embedded extent gives the file itself.
	ownName  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$`)
	zeroUUID = regexp.MustCompile(`^[0-]*$`)
)

// ParseDescriptor judges an embedded descriptor's text (NUL-padded): the
// header keys a streamOptimized disk has, no parent, one SPARSE extent
// that is the file itself (a plain name, no path), and disk database
// entries that name no parent. Any other line is refused: a key fleet
// does not know may be one a reader follows.
func ParseDescriptor(text []byte) (*Descriptor, error) {
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i] // readers stop at the first NUL
	}
	if len(text) > maxDescriptorText {
		return nil, refuse("its descriptor is %d bytes, more than %d", len(text), maxDescriptorText)
	}
	d := &Descriptor{}
	extents := 0
	for n, raw := range strings.Split(string(text), "\n") {
		l := strings.TrimSpace(strings.TrimSuffix(raw, "\r"))
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		at := func(format string, args ...any) error {
			return refuse("its descriptor's line %d %s: %s", n+1, quote(l), fmt.Sprintf(format, args...))
		}
		if m := extentLine.FindStringSubmatch(l); m != nil {
			extents++
			sectors, err := strconv.ParseUint(m[2], 10, 64)
			switch {
			case extents > 1:
				return nil, at("a second extent: a sparse disk is one file")
			case m[3] != "SPARSE":
				return nil, at("a %s extent, which reads another file or device; only SPARSE (the file itself) is taken", m[3])
			case m[1] == "NOACCESS":
				return nil, at("a NOACCESS extent")
			case err != nil:
				return nil, at("its size is not a number")
			case m[5] != "":
				return nil, at("a sparse extent with an offset")
			case !ownName.MatchString(m[4]) || strings.Contains(m[4], ".."):
				return nil, at("its file is not a plain name: a sparse extent must be the file itself")
			}
			d.Extent = Extent{Access: m[1], Sectors: sectors, Type: m[3], File: m[4]}
			continue
		}
		if m := ddbLine.FindStringSubmatch(l); m != nil {
			if strings.Contains(strings.ToLower(m[1]), "parent") && !zeroUUID.MatchString(m[2]) {
				return nil, at("it names a parent disk")
			}
			if termsafe.Line(m[2]) != m[2] {
				return nil, at("a value with control characters")
			}
			continue
		}
		m := headerLine.FindStringSubmatch(l)
		if m == nil {
			return nil, at("fleet does not know this line")
		}
		v := strings.Trim(m[2], `"`)
		switch m[1] {
		case "version":
			if v != "1" && v != "2" && v != "3" {
				return nil, at("version is not 1, 2 or 3")
			}
		case "encoding":
			if !strings.EqualFold(v, "UTF-8") && !strings.EqualFold(v, "windows-1252") {
				return nil, at("an encoding fleet does not read")
			}
		case "CID":
			if _, err := strconv.ParseUint(v, 16, 32); err != nil {
				return nil, at("CID is not 8 hex digits")
			}
		case "parentCID":
			if !strings.EqualFold(v, "ffffffff") {
				return nil, at("it names a parent disk")
			}
		case "createType":
			if v != "streamOptimized" {
				return nil, at("createType is not streamOptimized")
			}
			d.CreateType = v
		default:
			// parentFileNameHint and its kind name other files.
			return nil, at("the key %s is none a streamOptimized disk has", quote(m[1]))
		}
	}
	if extents != 1 {
		return nil, refuse("its descriptor has no extent")
	}
	if d.CreateType == "" {
		return nil, refuse("its descriptor has no createType")
	}
	return d, nil
}

// quote shows text from a hostile file on one line, cut short.
func quote(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return `"` + termsafe.Line(s) + `"`
}
