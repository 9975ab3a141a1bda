// Package qcow2test writes small qcow2 files byte by byte for tests: a
// valid empty disk by default (QEMU opens it), with knobs to make one
// that names a backing file, keeps its data elsewhere, or sets any
// feature bit.
package qcow2test

import (
	"encoding/binary"
	"os"
)

// Ext is one raw header extension.
type Ext struct {
	Type uint32
	Data []byte
}

// Options shape the file. The zero value is a valid version 3 disk of
// 1 MiB with 64 KiB clusters, as `qemu-img create -f qcow2` makes.
type Options struct {
	Version         uint32 // 0: 3
	ClusterBits     uint32 // 0: 16
	Size            uint64 // virtual size; 0: 1 MiB
	Backing         string // backing file name
	BackingFormat   string // backing format extension ("" : none)
	DataFile        string // external data file extension ("" : none)
	Incompatible    uint64
	Compatible      uint64
	Autoclear       uint64
	CompressionType byte
	CryptMethod     uint32
	FeatureTable    bool  // add QEMU's feature name table
	Extensions      []Ext // more extensions, after the others
}

const (
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extDataFile      = 0x44415441
)

// Image returns the file's bytes: the header cluster, a refcount table,
// a refcount block and the L1 table, which ends the file (as QEMU writes
// it).
func Image(o Options) []byte {
	if o.Version == 0 {
		o.Version = 3
	}
	if o.ClusterBits == 0 {
		o.ClusterBits = 16
	}
	if o.Size == 0 {
		o.Size = 1 << 20
	}
	cs := uint64(1) << o.ClusterBits
	entry := uint64(8)
	if o.Incompatible&(1<<4) != 0 {
		entry = 16
	}
	perL1 := cs * (cs / entry)
	l1 := (o.Size + perL1 - 1) / perL1
	b := make([]byte, 3*cs+l1*8)
	be := binary.BigEndian
	copy(b, "QFI\xfb")
	be.PutUint32(b[4:], o.Version)
	be.PutUint32(b[20:], o.ClusterBits)
	be.PutUint64(b[24:], o.Size)
	be.PutUint32(b[32:], o.CryptMethod)
	be.PutUint32(b[36:], uint32(l1))
	be.PutUint64(b[40:], 3*cs) // L1 table
	be.PutUint64(b[48:], cs)   // refcount table
	be.PutUint32(b[56:], 1)
	off := uint64(72)
	if o.Version >= 3 {
		be.PutUint64(b[72:], o.Incompatible)
		be.PutUint64(b[80:], o.Compatible)
		be.PutUint64(b[88:], o.Autoclear)
		be.PutUint32(b[96:], 4)
		be.PutUint32(b[100:], 112)
		b[104] = o.CompressionType
		off = 112
	}
	put := func(typ uint32, data []byte) {
		be.PutUint32(b[off:], typ)
		be.PutUint32(b[off+4:], uint32(len(data)))
		copy(b[off+8:], data)
		off += 8 + (uint64(len(data))+7)&^7
	}
	if o.BackingFormat != "" {
		put(extBackingFormat, []byte(o.BackingFormat))
	}
	if o.DataFile != "" {
		put(extDataFile, []byte(o.DataFile))
	}
	if o.FeatureTable {
		var t []byte
		for _, f := range []struct {
			typ, bit byte
			name     string
		}{{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"}, {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"}, {2, 0, "bitmaps"}, {2, 1, "raw external data"}} {
			e := make([]byte, 48)
			e[0], e[1] = f.typ, f.bit
			copy(e[2:], f.name)
			t = append(t, e...)
		}
		put(extFeatureTable, t)
	}
	for _, e := range o.Extensions {
		put(e.Type, e.Data)
	}
	off += 8 // end marker: zeros
	if o.Backing != "" {
		be.PutUint64(b[8:], off)
		be.PutUint32(b[16:], uint32(len(o.Backing)))
		copy(b[off:], o.Backing)
	}
	// Refcount table -> block at cluster 2, which counts clusters 0-3.
	be.PutUint64(b[cs:], 2*cs)
	for i := uint64(0); i < 4; i++ {
		be.PutUint16(b[2*cs+2*i:], 1)
	}
	return b
}

// Write writes Image(o) to path.
func Write(path string, o Options) error { return os.WriteFile(path, Image(o), 0o644) }
