// Package vmdktest writes small VMDKs for tests: the streamOptimized
// shape qemu-img writes, and variants of it, without qemu-img.
package vmdktest

import (
	"encoding/binary"
	"fmt"
)

// Options shape a VMDK; the zero value is a valid 1 MiB disk.
type Options struct {
	Capacity   uint64 // sectors; 0 is 2048
	Version    uint32 // 0 is 3
	Flags      uint32 // 0 is qemu-img's 0x30003
	Compress   uint16 // 0 is 1 (deflate)
	Descriptor string // "" is Descriptor("disk.vmdk", Capacity)
	// GDAtEnd puts the grain directory in a footer, as VirtualBox writes
	// a stream; Footer, if set, edits that footer's header.
	GDAtEnd bool
	Footer  func(h []byte)
	// Header, if set, edits the first header.
	Header func(h []byte)
}

// Descriptor is an embedded descriptor as qemu-img writes it.
func Descriptor(name string, sectors uint64) string {
	return fmt.Sprintf(`# Disk DescriptorFile
version=1
CID=9c00afaa
parentCID=ffffffff
createType="streamOptimized"

# Extent description
RW %d SPARSE "%s"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "2"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
`, sectors, name)
}

// Header fills a 512-byte sparse extent header.
func Header(b []byte, version, flags uint32, capacity, descOff, descSize, gdOffset uint64, compress uint16) {
	le := binary.LittleEndian
	copy(b, "KDMV")
	le.PutUint32(b[4:], version)
	le.PutUint32(b[8:], flags)
	le.PutUint64(b[12:], capacity)
	le.PutUint64(b[20:], 128) // grain size
	le.PutUint64(b[28:], descOff)
	le.PutUint64(b[36:], descSize)
	le.PutUint32(b[44:], 512) // grain table entries
	le.PutUint64(b[48:], 21)  // redundant grain directory
	le.PutUint64(b[56:], gdOffset)
	le.PutUint64(b[64:], 128) // overhead
	copy(b[73:], "\n \r\n")
	le.PutUint16(b[77:], compress)
}

// Build returns the VMDK's bytes: a header, a 20-sector descriptor, a
// grain directory and table (empty: the disk reads as zeros), and, with
// GDAtEnd, the footer marker, footer and end-of-stream marker.
func Build(o Options) []byte {
	if o.Capacity == 0 {
		o.Capacity = 2048
	}
	if o.Version == 0 {
		o.Version = 3
	}
	if o.Flags == 0 {
		o.Flags = 0x30003
	}
	if o.Compress == 0 {
		o.Compress = 1
	}
	if o.Descriptor == "" {
		o.Descriptor = Descriptor("disk.vmdk", o.Capacity)
	}
	const sector = 512
	b := make([]byte, 24*sector)
	gd := uint64(22)
	if o.GDAtEnd {
		gd = ^uint64(0)
	}
	Header(b, o.Version, o.Flags, o.Capacity, 1, 20, gd, o.Compress)
	if o.Header != nil {
		o.Header(b[:sector])
	}
	copy(b[sector:21*sector], o.Descriptor)
	if o.GDAtEnd {
		marker := make([]byte, sector)
		binary.LittleEndian.PutUint64(marker, 1)      // one sector of metadata
		binary.LittleEndian.PutUint32(marker[12:], 3) // footer
		footer := make([]byte, sector)
		Header(footer, o.Version, o.Flags, o.Capacity, 1, 20, 22, o.Compress)
		if o.Footer != nil {
			o.Footer(footer)
		}
		b = append(append(append(b, marker...), footer...), make([]byte, sector)...)
	}
	return b
}
