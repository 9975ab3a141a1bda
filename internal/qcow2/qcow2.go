// Package qcow2 reads a disk image's header in Go, so that a disk fleet
// did not write (pulled, downloaded, cached) is judged before QEMU opens
// it: QEMU follows what a qcow2 header says, and a header can name a host
// file as its backing file or external data file, which every clone would
// then read and show its guest. qemu-img is never run on a hostile file.
//
// The layout is QEMU's docs/interop/qcow2.txt (versions 2 and 3).
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// Format is a disk's format as fleet expects it.
type Format string

const (
	QCOW2 Format = "qcow2"
	Raw   Format = "raw"
)

// Feature bits (qcow2.txt, "incompatible_features" and the others).
const (
	IncompatDirty       = 1 << 0
	IncompatCorrupt     = 1 << 1
	IncompatDataFile    = 1 << 2 // an external data file holds the guest's data
	IncompatCompression = 1 << 3 // compression_type is not zlib
	IncompatExtendedL2  = 1 << 4 // subclusters
	incompatKnown       = IncompatDirty | IncompatCorrupt | IncompatDataFile | IncompatCompression | IncompatExtendedL2

	CompatLazyRefcounts = 1 << 0

	AutoclearBitmaps = 1 << 0
	AutoclearRawData = 1 << 1 // the external data file is a valid raw image
)

// Header extension types.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441
)

// Limits, QEMU's where it has them (block/qcow2.h).
const (
	minClusterBits  = 9
	maxClusterBits  = 21
	maxL1Bytes      = 32 << 20 // QCOW_MAX_L1_SIZE
	maxRefTabBytes  = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	maxSnapshots    = 65536    // QCOW_MAX_SNAPSHOTS
	maxBackingName  = 1023
	v2HeaderLength  = 72
	v3HeaderLength  = 104 // without compression_type
	snapshotHdrSize = 40

	// DefaultMaxSize is the largest virtual size a disk may claim when
	// Expect says nothing: far beyond any image fleet bakes.
	DefaultMaxSize int64 = 64 << 40
)

// Expect is what a caller takes.
type Expect struct {
	Format Format // "" is QCOW2
	// Backing is the one backing file the disk may name (a warm
	// template's overlay on its image's disk), with format qcow2. Empty:
	// the disk must name none.
	Backing string
	MaxSize int64 // largest virtual size; 0 is DefaultMaxSize
}

// Header is what a qcow2 file's first cluster says.
type Header struct {
	Version         uint32
	ClusterBits     uint32
	Size            uint64 // virtual size in bytes
	CryptMethod     uint32
	Incompatible    uint64
	Compatible      uint64
	Autoclear       uint64
	RefcountOrder   uint32
	HeaderLength    uint32
	CompressionType uint8
	BackingFile     string
	BackingFormat   string
	DataFile        string
	HasCrypto       bool           // a full disk encryption header extension
	FeatureNames    map[int]string // "type/bit" packed as type<<8|bit, from the feature name table
	L1Size          uint32
	L1Offset        uint64
	RefTabOffset    uint64
	RefTabClusters  uint32
	Snapshots       uint32
	SnapshotsOffset uint64
}

// ErrRefused is what every refusal wraps.
var ErrRefused = errors.New("refused")

// RefusedError says which file was refused and why, on one line.
type RefusedError struct{ Path, Reason string }

func (e *RefusedError) Error() string {
	return "refused disk " + termsafe.Line(e.Path) + ": " + e.Reason
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Check judges the disk at path against want: a qcow2 must stand alone
// (no backing file but want.Backing, no external data file, no
// encryption, no feature this parser does not know), and a raw disk must
// not be another format in disguise. It reads one cluster at most.
func Check(path string, want Expect) (*Header, error) {
	refuse := func(reason string) error { return &RefusedError{Path: path, Reason: reason} }
	// Never follow a link, never block on a FIFO: the file itself is judged.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, refuse("it is a symbolic link")
		}
		return nil, fmt.Errorf("check disk %s: %w", termsafe.Line(path), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("check disk %s: %w", termsafe.Line(path), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, refuse(fmt.Sprintf("it is not a regular file (%s)", fi.Mode().Type()))
	}
	h, reason := judge(f, fi.Size(), want, filepath.Dir(path))
	if reason != "" {
		return h, refuse(reason)
	}
	return h, nil
}

// judge is Check on an open file; dir resolves a relative backing name.
// It returns why the file is refused, or "".
func judge(r io.ReaderAt, size int64, want Expect, dir string) (*Header, string) {
	if want.Format == Raw {
		if name := Sniff(r); name != "" {
			return nil, fmt.Sprintf("a raw disk was expected but it is a %s image", name)
		}
		return nil, ""
	}
	if want.Format != "" && want.Format != QCOW2 {
		return nil, fmt.Sprintf("fleet cannot check the format %q", want.Format)
	}
	h, err := Parse(r, size)
	if err != nil {
		return h, err.Error()
	}
	if h.Incompatible&IncompatDataFile != 0 || h.DataFile != "" || h.Autoclear&AutoclearRawData != 0 {
		name := ""
		if h.DataFile != "" {
			name = " " + quote(h.DataFile)
		}
		return h, "it keeps its data in an external file" + name + ": a disk must not read a host file"
	}
	if h.BackingFile != "" || h.BackingFormat != "" {
		if want.Backing == "" {
			return h, "it names the backing file " + quote(h.BackingFile) + ": a disk from outside must stand alone, not read a host file"
		}
		if !sameFile(h.BackingFile, want.Backing, dir) {
			return h, "it names the backing file " + quote(h.BackingFile) + ", not " + quote(want.Backing)
		}
		if h.BackingFormat != string(QCOW2) {
			return h, "its backing file's format is " + quote(h.BackingFormat) + ", not qcow2"
		}
	} else if want.Backing != "" {
		return h, "it has no backing file, but should be an overlay on " + quote(want.Backing)
	}
	limit := want.MaxSize
	if limit <= 0 {
		limit = DefaultMaxSize
	}
	switch {
	case h.CryptMethod != 0 || h.HasCrypto:
		return h, fmt.Sprintf("it is encrypted (method %d), which fleet cannot boot or check", h.CryptMethod)
	case h.Incompatible&IncompatCorrupt != 0:
		return h, "QEMU marked it corrupt"
	case h.Size > uint64(limit):
		return h, fmt.Sprintf("its virtual size %d bytes is beyond the %d fleet takes", h.Size, limit)
	}
	return h, ""
}

// sameFile reports whether a backing name (relative names are QEMU's:
// from the overlay's folder) is the file want.
func sameFile(name, want, dir string) bool {
	if !filepath.IsAbs(name) {
		name = filepath.Join(dir, name)
	}
	if filepath.Clean(name) == filepath.Clean(want) {
		return true
	}
	a, err1 := os.Stat(name)
	b, err2 := os.Stat(want)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// Parse reads a qcow2 header from r, a file of size bytes, and checks
// that it is whole and sane: a version QEMU reads (2 or 3), cluster size,
// header length, tables inside the file, feature bits it knows, and
// header extensions that fit. It judges nothing else (see Check).
func Parse(r io.ReaderAt, size int64) (*Header, error) {
	var head [v3HeaderLength + 8]byte
	n, err := r.ReadAt(head[:], 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read the header: %w", err)
	}
	b := head[:n]
	if n < 4 || !bytes.Equal(b[:4], []byte("QFI\xfb")) {
		if name := sniffBytes(b); name != "" {
			return nil, fmt.Errorf("it is a %s image, not qcow2", name)
		}
		return nil, errors.New("it is not a qcow2 image (no QFI\\xfb magic)")
	}
	if n < 8 {
		return nil, fmt.Errorf("the header is cut off after %d bytes", n)
	}
	be := binary.BigEndian
	h := &Header{Version: be.Uint32(b[4:])}
	if h.Version != 2 && h.Version != 3 {
		return nil, fmt.Errorf("it is qcow version %d; fleet takes versions 2 and 3", h.Version)
	}
	need := v2HeaderLength
	if h.Version == 3 {
		need = v3HeaderLength
	}
	if n < need {
		return nil, fmt.Errorf("the version %d header is cut off after %d of %d bytes", h.Version, n, need)
	}
	backingOff := be.Uint64(b[8:])
	backingLen := be.Uint32(b[16:])
	h.ClusterBits = be.Uint32(b[20:])
	h.Size = be.Uint64(b[24:])
	h.CryptMethod = be.Uint32(b[32:])
	h.L1Size = be.Uint32(b[36:])
	h.L1Offset = be.Uint64(b[40:])
	h.RefTabOffset = be.Uint64(b[48:])
	h.RefTabClusters = be.Uint32(b[56:])
	h.Snapshots = be.Uint32(b[60:])
	h.SnapshotsOffset = be.Uint64(b[64:])
	h.RefcountOrder, h.HeaderLength = 4, v2HeaderLength
	if h.Version == 3 {
		h.Incompatible = be.Uint64(b[72:])
		h.Compatible = be.Uint64(b[80:])
		h.Autoclear = be.Uint64(b[88:])
		h.RefcountOrder = be.Uint32(b[96:])
		h.HeaderLength = be.Uint32(b[100:])
	}

	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return h, fmt.Errorf("its cluster_bits %d is outside %d-%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	cs := uint64(1) << h.ClusterBits
	if h.Version == 3 {
		if h.HeaderLength < v3HeaderLength || uint64(h.HeaderLength) > cs || h.HeaderLength%8 != 0 {
			return h, fmt.Errorf("its header_length %d is not a multiple of 8 from %d to its cluster size %d", h.HeaderLength, v3HeaderLength, cs)
		}
		if h.RefcountOrder > 6 {
			return h, fmt.Errorf("its refcount_order %d is above 6", h.RefcountOrder)
		}
	}
	// The first cluster holds the header, its extensions and the backing
	// name: read it whole (at most 2 MiB), refusing a file cut off inside
	// what the header says is there.
	end := min(cs, uint64(max(size, 0)))
	if uint64(h.HeaderLength) > end {
		return h, fmt.Errorf("the file ends at %d bytes, inside its %d-byte header", size, h.HeaderLength)
	}
	cluster := make([]byte, end)
	if m, err := r.ReadAt(cluster, 0); uint64(m) != end {
		return h, fmt.Errorf("read the first cluster: %w", err)
	}
	if h.Version == 3 && h.HeaderLength > v3HeaderLength {
		h.CompressionType = cluster[v3HeaderLength]
	}
	if h.Size == 0 {
		return h, errors.New("its virtual size is 0")
	}
	if h.Size > 1<<62 {
		return h, fmt.Errorf("its virtual size %d bytes is absurd", h.Size)
	}
	// Table checks: QEMU's own (validate_table_offset, the L1 minimum),
	// plus the tables being inside the file.
	l2Entry := uint64(8)
	if h.Incompatible&IncompatExtendedL2 != 0 {
		l2Entry = 16
	}
	perL1 := cs * (cs / l2Entry) // bytes one L1 entry maps
	minL1 := (h.Size + perL1 - 1) / perL1
	switch {
	case uint64(h.L1Size)*8 > maxL1Bytes:
		return h, fmt.Errorf("its L1 table of %d entries is larger than QEMU reads", h.L1Size)
	case uint64(h.L1Size) < minL1:
		return h, fmt.Errorf("its L1 table of %d entries cannot map its virtual size %d (needs %d)", h.L1Size, h.Size, minL1)
	case !inFile(h.L1Offset, uint64(h.L1Size)*8, cs, size):
		return h, fmt.Errorf("its L1 table at %d (%d entries) is not a cluster-aligned table inside the %d-byte file", h.L1Offset, h.L1Size, size)
	case h.RefTabClusters == 0 || uint64(h.RefTabClusters)*cs > maxRefTabBytes:
		return h, fmt.Errorf("its refcount table of %d clusters is empty or larger than QEMU reads", h.RefTabClusters)
	case !inFile(h.RefTabOffset, uint64(h.RefTabClusters)*cs, cs, size):
		return h, fmt.Errorf("its refcount table at %d (%d clusters) is not a cluster-aligned table inside the %d-byte file", h.RefTabOffset, h.RefTabClusters, size)
	case h.Snapshots > maxSnapshots:
		return h, fmt.Errorf("it claims %d snapshots, more than QEMU reads", h.Snapshots)
	case h.Snapshots > 0 && !inFile(h.SnapshotsOffset, uint64(h.Snapshots)*snapshotHdrSize, cs, size):
		return h, fmt.Errorf("its snapshot table at %d is not a cluster-aligned table inside the %d-byte file", h.SnapshotsOffset, size)
	}

	// The backing file's name, for the caller to judge.
	extEndAt := end
	if backingOff != 0 {
		if backingLen == 0 || backingLen > maxBackingName || backingOff < uint64(h.HeaderLength) || backingOff >= cs ||
			backingOff+uint64(backingLen) > cs {
			return h, fmt.Errorf("its backing file name (%d bytes at %d) does not fit its first cluster", backingLen, backingOff)
		}
		if backingOff+uint64(backingLen) > end {
			return h, fmt.Errorf("the file ends inside its backing file name at %d", backingOff)
		}
		h.BackingFile = string(cluster[backingOff : backingOff+uint64(backingLen)])
		extEndAt = backingOff
	} else if backingLen != 0 {
		return h, fmt.Errorf("it gives a backing file name length (%d) without an offset", backingLen)
	}

	if err := h.readExtensions(cluster, extEndAt); err != nil {
		return h, err
	}
	if unknown := h.Incompatible &^ incompatKnown; unknown != 0 {
		return h, fmt.Errorf("it sets incompatible feature bits fleet does not know: %s", h.bitNames(0, unknown))
	}
	if h.Incompatible&IncompatCompression != 0 {
		if h.CompressionType != 1 {
			return h, fmt.Errorf("its compression type %d is not zstd (1), though its compression bit is set", h.CompressionType)
		}
	} else if h.CompressionType != 0 {
		return h, fmt.Errorf("its compression type %d is set without its incompatible bit", h.CompressionType)
	}
	return h, nil
}

// inFile reports whether a table of n bytes at off is cluster aligned,
// after the header cluster, and inside a file of size bytes.
func inFile(off, n, cs uint64, size int64) bool {
	return off >= cs && off%cs == 0 && off <= uint64(size) && n <= uint64(size)-off
}

// readExtensions walks the header extensions from the header's end to
// end: each is a type, a length and data padded to 8 bytes, up to an end
// marker (or the end of what may hold them, where QEMU stops too).
func (h *Header) readExtensions(cluster []byte, end uint64) error {
	be := binary.BigEndian
	seen := map[uint32]bool{}
	for off := uint64(h.HeaderLength); off < end; {
		if end-off < 8 {
			if allZero(cluster[off:end]) {
				return nil
			}
			return fmt.Errorf("a header extension at %d is cut off", off)
		}
		typ, n := be.Uint32(cluster[off:]), uint64(be.Uint32(cluster[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if n > end-off {
			return fmt.Errorf("header extension 0x%08x at %d is %d bytes, past the end of its area at %d", typ, off-8, n, end)
		}
		if seen[typ] {
			return fmt.Errorf("header extension 0x%08x appears twice", typ)
		}
		seen[typ] = true
		data := cluster[off : off+n]
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(data)
			if h.BackingFormat == "" {
				h.BackingFormat = "(empty)"
			}
		case extDataFile:
			h.DataFile = string(data)
			if h.DataFile == "" {
				h.DataFile = "(empty name)"
			}
		case extCrypto:
			h.HasCrypto = true
		case extFeatureTable:
			if n%48 != 0 {
				return fmt.Errorf("its feature name table is %d bytes, not a multiple of 48", n)
			}
			h.FeatureNames = map[int]string{}
			for i := uint64(0); i < n; i += 48 {
				name := data[i+2 : i+48]
				if z := bytes.IndexByte(name, 0); z >= 0 {
					name = name[:z]
				}
				h.FeatureNames[int(data[i])<<8|int(data[i+1])] = string(name)
			}
		case extBitmaps:
			// Persistent dirty bitmaps: clusters inside the file, no names
			// of other files.
		default:
			return fmt.Errorf("it has header extension 0x%08x, which fleet does not know (a newer QEMU might act on it)", typ)
		}
		off += (n + 7) &^ 7
	}
	return nil
}

// bitNames lists set bits with the names the file's own table gives.
func (h *Header) bitNames(typ int, bits uint64) string {
	var b bytes.Buffer
	for i := 0; i < 64; i++ {
		if bits&(1<<i) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d", i)
		if name, ok := h.FeatureNames[typ<<8|i]; ok {
			b.WriteString(" " + quote(name))
		}
	}
	return b.String()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// quote shows a name from a hostile file on one line, cut short.
func quote(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return `"` + termsafe.Line(s) + `"`
}

// Sniff names the image format r holds if it starts like one QEMU
// detects (qcow, qcow2, QED, VMDK, VDI, VHDX, VPC, LUKS, parallels,
// bochs, cloop), or "" for anything else, a raw disk included.
func Sniff(r io.ReaderAt) string {
	var b [512]byte
	n, _ := r.ReadAt(b[:], 0)
	return sniffBytes(b[:n])
}

var magics = []struct {
	off  int
	sig  string
	name string
}{
	{0, "QFI\xfb", "qcow"},
	{0, "QED\x00", "QED"},
	{0, "KDMV", "VMDK"},
	{0, "COWD", "VMDK"},
	{0, "# Disk DescriptorFile", "VMDK descriptor"},
	{0x40, "\x7f\x10\xda\xbe", "VDI"},
	{0, "vhdxfile", "VHDX"},
	{0, "conectix", "VPC"},
	{0, "LUKS\xba\xbe", "LUKS"},
	{0, "WithoutFreeSpace", "parallels"},
	{0, "WithouFreSpacExt", "parallels"},
	{0, "Bochs Virtual HD Image", "bochs"},
	{0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"},
}

func sniffBytes(b []byte) string {
	for _, m := range magics {
		if len(b) >= m.off+len(m.sig) && string(b[m.off:m.off+len(m.sig)]) == m.sig {
			return m.name
		}
	}
	return ""
}
