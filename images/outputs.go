package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/agentfleet/agentfleet/internal/vmdk"
)

// An export is handed to a hypervisor or a person as it is: VirtualBox
// imports an OVA and follows its OVF and its VMDKs' descriptors, Vagrant
// runs a box's Vagrantfile. A digest only says the file is the one pushed,
// so each kind is checked to be the shape fleet's builder writes
// (builder/step_export.go) before it is stored and again before it is
// used: no member names a host file, no archive entry is a link or
// escapes, and no machine settings come along that fleet did not write.

// Output kinds besides the kernel and initrd.
const (
	OutputQCOW2   = "qcow2"
	OutputOVA     = "ova"
	OutputVagrant = "vagrant"
)

// OutputKinds are the outputs a manifest may list: a kind fleet has no
// check for is refused.
var OutputKinds = []string{OutputQCOW2, OutputOVA, OutputVagrant, OutputKernel, OutputInitrd}

// VagrantBoxVagrantfile is the Vagrantfile fleet's box carries. Vagrant
// runs a box's Vagrantfile as Ruby on the host, so a box may carry this
// one or none.
const VagrantBoxVagrantfile = "Vagrant.configure(\"2\") do |config|\n  config.ssh.username = \"agent\"\nend\n"

const (
	maxKernel   = 256 << 20
	maxInitrd   = 2 << 30
	maxOVF      = 1 << 20
	maxSmall    = 64 << 10 // metadata.json, Vagrantfile, .mf
	maxMembers  = 8
	maxPadding  = 1 << 20 // zeros after a tar's end (tar pads to its record size)
	maxOVFDepth = 16
)

// memberName is an archive member's name: a plain file name that fits a
// ustar name field, so no prefix, folder, absolute path or "..".
var memberName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$`)

// CheckOutput judges img's output of kind, as it is before it is handed
// to a hypervisor: see CheckOutputFile.
func CheckOutput(img Image, kind string) error {
	_, err := img.OutputPath(kind)
	return err
}

// OutputPath is the file of img's output of kind, judged again now: the
// path to hand to a hypervisor (VirtualBox imports the OVA at it).
func (i Image) OutputPath(kind string) (string, error) {
	o, ok := i.Outputs[kind]
	if !ok {
		return "", fmt.Errorf("image %s@%s has no %s output", i.Name, i.Version, line(kind))
	}
	path := filepath.Join(i.Dir, o.File)
	if err := checkOutput(kind, path, o.Bytes, true); err != nil {
		return "", fmt.Errorf("image %s@%s: %w", i.Name, i.Version, err)
	}
	return path, nil
}

// CheckOutputFile judges the file at path as an output of kind, the way
// a pull does before anything is stored: a kernel or initrd is a regular
// file of a bounded size, a qcow2 names no other file, an OVA and a
// Vagrant box are archives of the shape fleet writes, with VMDKs that
// name no other file. The error is one line naming the output, the
// member and the reason.
func CheckOutputFile(kind, path string) error { return checkOutput(kind, path, 0, true) }

// checkOutputs judges every output of a stored version when it is used;
// deep is false there, so a Vagrant box (gzip: to check it is to unpack
// it) is only held to be a regular file. No hypervisor of fleet's opens it.
func checkOutputs(img Image) error {
	for _, kind := range slices.Sorted(maps.Keys(img.Outputs)) {
		o := img.Outputs[kind]
		if err := checkOutput(kind, filepath.Join(img.Dir, o.File), o.Bytes, kind != OutputVagrant); err != nil {
			return err
		}
	}
	return nil
}

// checkOutput is CheckOutputFile with the size the manifest records
// (0: not known) and deep false to skip unpacking a Vagrant box.
func checkOutput(kind, path string, want int64, deep bool) error {
	err := judgeOutput(kind, path, want, deep)
	if err != nil {
		return fmt.Errorf("output %s %s: %w", line(kind), show(filepath.Base(path)), err)
	}
	return nil
}

func judgeOutput(kind, path string, want int64, deep bool) error {
	if kind == OutputQCOW2 {
		return CheckDisk(path)
	}
	if !slices.Contains(OutputKinds, kind) {
		return fmt.Errorf("fleet has no check for outputs of this kind (it knows %s)", strings.Join(OutputKinds, ", "))
	}
	f, fi, err := openRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if want > 0 && fi.Size() != want {
		return fmt.Errorf("it is %d bytes, not the %d its manifest records", fi.Size(), want)
	}
	switch kind {
	case OutputKernel, OutputInitrd:
		if limit := map[string]int64{OutputKernel: maxKernel, OutputInitrd: maxInitrd}[kind]; fi.Size() > limit {
			return fmt.Errorf("it is %d bytes, more than a %s fleet takes", fi.Size(), kind)
		}
		return nil
	case OutputOVA:
		return checkArchive(f, fi.Size(), false)
	case OutputVagrant:
		if !deep {
			return nil
		}
		return checkArchive(f, fi.Size(), true)
	}
	return nil
}

// openRegular opens a file of the store that must be a regular file:
// never a link to elsewhere, a FIFO or a device.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, errors.New("it is a symbolic link")
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("it is not a regular file (%s)", fi.Mode().Type())
	}
	return f, fi, nil
}

// archive is what a walk of an OVA or a box found.
type archive struct {
	box      bool
	names    map[string]int64 // member name to size
	lower    map[string]bool
	ovf      *ovfInfo
	ovfName  string
	mf       bool
	mfNames  []string
	vmdks    []string
	metadata bool
}

// checkArchive walks an OVA (a plain tar whose first member is the OVF)
// or a Vagrant box (a tar, gzipped or not, with metadata.json): every
// member a regular file with a plain name, one OVF, VMDKs that are
// streamOptimized sparse extents naming no other file, an optional .mf.
func checkArchive(f *os.File, size int64, box bool) error {
	var magic [2]byte
	n, _ := f.ReadAt(magic[:], 0)
	gz := n == 2 && magic == [2]byte{0x1f, 0x8b}
	var tr *tar.Reader
	var rest io.Reader // what follows the archive's end
	if gz {
		if !box {
			return errors.New("it is gzip-compressed: an OVA is a plain tar")
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("its gzip stream: %w", err)
		}
		defer zr.Close()
		// A VMDK's grains are compressed already: a box that unpacks to
		// far more than its size is a bomb, not a disk.
		c := &capped{r: zr, left: 2*size + 64<<20}
		tr, rest = tar.NewReader(c), c
	} else {
		tr, rest = tar.NewReader(f), f
	}
	a := &archive{box: box, names: map[string]int64{}, lower: map[string]bool{}}
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("its tar after %d members: %w", i, err)
		}
		if i >= maxMembers {
			return fmt.Errorf("it has more than %d members", maxMembers)
		}
		if err := a.member(tr, h, f, gz, i); err != nil {
			return fmt.Errorf("member %s: %w", show(h.Name), err)
		}
	}
	// A reader that does not stop where Go's does (a lone zero block)
	// would find more members: only padding may follow the end.
	tail, err := io.ReadAll(io.LimitReader(rest, maxPadding+1))
	if err != nil {
		return fmt.Errorf("after its tar: %w", err)
	}
	if len(tail) > maxPadding || bytes.ContainsFunc(tail, func(r rune) bool { return r != 0 }) {
		return errors.New("it has data after the end of its tar")
	}
	return a.whole()
}

// member judges one archive entry.
func (a *archive) member(tr *tar.Reader, h *tar.Header, f *os.File, gz bool, i int) error {
	if err := checkTarHeader(h); err != nil {
		return err
	}
	if _, dup := a.names[h.Name]; dup || a.lower[strings.ToLower(h.Name)] {
		return errors.New("the archive has it twice")
	}
	a.names[h.Name], a.lower[strings.ToLower(h.Name)] = h.Size, true
	ext := strings.ToLower(filepath.Ext(h.Name))
	switch {
	case ext == ".ovf":
		if a.ovf != nil {
			return fmt.Errorf("a second OVF (the first is %s)", show(a.ovfName))
		}
		if !a.box && i != 0 {
			return errors.New("the OVF is not the OVA's first member")
		}
		b, err := readMember(tr, h, maxOVF)
		if err != nil {
			return err
		}
		if a.ovf, err = checkOVF(b); err != nil {
			return err
		}
		a.ovfName = h.Name
	case ext == ".vmdk":
		ra, err := memberAt(tr, h, f, gz)
		if err != nil {
			return err
		}
		if _, _, err := vmdk.Check(ra, h.Size); err != nil {
			return err
		}
		a.vmdks = append(a.vmdks, h.Name)
	case ext == ".mf":
		if a.mf {
			return errors.New("a second manifest")
		}
		a.mf = true
		b, err := readMember(tr, h, maxSmall)
		if err != nil {
			return err
		}
		if a.mfNames, err = checkMF(b); err != nil {
			return err
		}
	case a.box && h.Name == "metadata.json":
		b, err := readMember(tr, h, maxSmall)
		if err != nil {
			return err
		}
		var meta map[string]any
		if err := json.Unmarshal(b, &meta); err != nil {
			return fmt.Errorf("it is not a JSON object: %w", err)
		}
		for k, v := range meta {
			if k != "provider" {
				return fmt.Errorf("it has the key %s, which fleet's boxes do not", show(k))
			}
			if v != "virtualbox" {
				p, _ := v.(string)
				return fmt.Errorf("its provider is %s, not virtualbox", show(p))
			}
		}
		if meta["provider"] == nil {
			return errors.New("it names no provider")
		}
		a.metadata = true
	case a.box && h.Name == "Vagrantfile":
		b, err := readMember(tr, h, maxSmall)
		if err != nil {
			return err
		}
		if string(b) != VagrantBoxVagrantfile {
			return errors.New("it is not fleet's: Vagrant would run it on the host")
		}
	default:
		return errors.New("it is none of the files fleet puts in this archive")
	}
	return nil
}

// whole checks what only the whole archive shows: the OVF's files are
// exactly its VMDK members, the .mf names only members.
func (a *archive) whole() error {
	if a.ovf == nil {
		return errors.New("it has no OVF descriptor")
	}
	if a.box && !a.metadata {
		return errors.New("it has no metadata.json")
	}
	for _, fl := range a.ovf.files {
		size, ok := a.names[fl.href]
		if !ok || !strings.HasSuffix(strings.ToLower(fl.href), ".vmdk") {
			return fmt.Errorf("member %s: its File %s is no VMDK of the archive", show(a.ovfName), show(fl.href))
		}
		if fl.size >= 0 && fl.size != size {
			return fmt.Errorf("member %s: its File %s has size %d, the member %d", show(a.ovfName), show(fl.href), fl.size, size)
		}
	}
	for _, v := range a.vmdks {
		if !slices.ContainsFunc(a.ovf.files, func(f ovfFile) bool { return f.href == v }) {
			return fmt.Errorf("member %s: the OVF does not reference it", show(v))
		}
	}
	for _, n := range a.mfNames {
		if _, ok := a.names[n]; !ok || strings.HasSuffix(strings.ToLower(n), ".mf") {
			return fmt.Errorf("its manifest names %s, which is no other member", show(n))
		}
	}
	return nil
}

// checkTarHeader: a regular file with a plain name, in a ustar or pax
// header whose records change nothing a ustar reader would not see.
func checkTarHeader(h *tar.Header) error {
	if h.Typeflag != tar.TypeReg {
		what := map[byte]string{tar.TypeSymlink: "a symbolic link", tar.TypeLink: "a hard link", tar.TypeChar: "a device",
			tar.TypeBlock: "a device", tar.TypeDir: "a folder", tar.TypeFifo: "a FIFO"}[h.Typeflag]
		if what == "" {
			what = fmt.Sprintf("of type %q", h.Typeflag)
		}
		return fmt.Errorf("it is %s, not a regular file", what)
	}
	if !memberName.MatchString(h.Name) || strings.Contains(h.Name, "..") {
		return errors.New("its name is not a plain file name (absolute, a folder, or ..)")
	}
	if h.Format&(tar.FormatUSTAR|tar.FormatPAX) == 0 || h.Format&tar.FormatGNU != 0 {
		return fmt.Errorf("its header is %s, not ustar or pax", h.Format)
	}
	// A pax path or sparse map says one thing to Go and another to a
	// reader that skips pax records (VirtualBox's).
	for k := range h.PAXRecords {
		if k != "size" && k != "mtime" && k != "atime" && k != "ctime" {
			return fmt.Errorf("its pax header has the record %s", show(k))
		}
	}
	if h.Size < 0 {
		return fmt.Errorf("its size %d is negative", h.Size)
	}
	return nil
}

func readMember(tr *tar.Reader, h *tar.Header, max int64) ([]byte, error) {
	if h.Size > max {
		return nil, fmt.Errorf("it is %d bytes, more than %d", h.Size, max)
	}
	b := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, b); err != nil {
		return nil, fmt.Errorf("read it: %w", err)
	}
	return b, nil
}

// memberAt gives the parts of a member vmdk.Check reads: from the file
// itself when the tar is plain (tar's reader reads headers exactly, so
// the file's offset is the member's start, and it seeks over the rest),
// else the head and the tail kept while the member streams by.
func memberAt(tr *tar.Reader, h *tar.Header, f *os.File, gz bool) (io.ReaderAt, error) {
	if !gz {
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		return io.NewSectionReader(f, off, h.Size), nil
	}
	head := make([]byte, min(h.Size, vmdk.HeadBytes))
	if _, err := io.ReadFull(tr, head); err != nil {
		return nil, fmt.Errorf("read it: %w", err)
	}
	tail := slices.Clone(head[max(0, len(head)-vmdk.FooterBytes):])
	buf := make([]byte, 256<<10)
	for {
		n, err := tr.Read(buf)
		if n > 0 {
			tail = append(tail, buf[:n]...)
			if len(tail) > 4*vmdk.FooterBytes {
				tail = slices.Clone(tail[len(tail)-vmdk.FooterBytes:])
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read it: %w", err)
		}
	}
	if len(tail) > vmdk.FooterBytes {
		tail = tail[len(tail)-vmdk.FooterBytes:]
	}
	return &headTail{head: head, tail: tail, size: h.Size}, nil
}

// headTail serves reads of a member's first and last bytes.
type headTail struct {
	head, tail []byte
	size       int64
}

func (h *headTail) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	switch {
	case off < 0:
		return 0, errors.New("negative offset")
	case off >= h.size:
		return 0, io.EOF
	case end <= int64(len(h.head)):
		return copy(p, h.head[off:]), nil
	case off >= h.size-int64(len(h.tail)) && end <= h.size:
		return copy(p, h.tail[off-(h.size-int64(len(h.tail))):]), nil
	}
	return 0, fmt.Errorf("bytes %d to %d of the member were not kept", off, end)
}

// capped fails a read past its limit instead of ending the stream, so a
// bomb is named as one.
type capped struct {
	r    io.Reader
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("it unpacks to far more than its own size")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

var mfLine = regexp.MustCompile(`^(SHA1|SHA256|SHA512) ?\(([^()]+)\) ?= ?([0-9a-fA-F]+)$`)

// checkMF reads an OVA's manifest of digests: the member names it lists.
func checkMF(b []byte) ([]string, error) {
	var names []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\r\n"), "\n") {
		l = strings.TrimSuffix(l, "\r")
		m := mfLine.FindStringSubmatch(l)
		if m == nil {
			return nil, fmt.Errorf("its line %s is not ALGORITHM(name)= digest", show(l))
		}
		if !memberName.MatchString(m[2]) {
			return nil, fmt.Errorf("it names %s, not a member", show(m[2]))
		}
		names = append(names, m[2])
	}
	return names, nil
}

// The namespaces of fleet's OVF (builder/ovf.go).
const (
	nsOVF  = "http://schemas.dmtf.org/ovf/envelope/1"
	nsRASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
	nsVSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
	nsXML  = "http://www.w3.org/XML/1998/namespace"
	nsVBox = "http://www.virtualbox.org/ovf/machine"
	// vmdkStream is the one disk format fleet's OVF names.
	vmdkStream = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
)

// ovfElements are the elements fleet's OVF has, by namespace. Anything
// else is refused: VirtualBox reads settings from more elements than
// these (a vbox:Machine block carries shared folders, attached media,
// serial ports to host files), and a reader may match them by local name.
var ovfElements = map[string][]string{
	nsOVF: {"Envelope", "References", "File", "DiskSection", "Info", "Disk", "NetworkSection", "Network", "Description",
		"VirtualSystem", "OperatingSystemSection", "VirtualHardwareSection", "System", "Item"},
	nsRASD: {"Address", "AddressOnParent", "AllocationUnits", "AutomaticAllocation", "Caption", "Connection", "Description",
		"ElementName", "HostResource", "InstanceID", "Parent", "ResourceSubType", "ResourceType", "VirtualQuantity"},
	nsVSSD: {"ElementName", "InstanceID", "VirtualSystemIdentifier", "VirtualSystemType"},
}

// ovfAttrs are the ovf: attributes fleet's OVF has, and xml:lang.
var ovfAttrs = []string{"version", "id", "href", "size", "capacity", "diskId", "fileRef", "format", "name"}

// ovfResources are the hardware items fleet's OVF lists (CIM resource
// types): CPU, memory, IDE/SCSI/SATA controllers, network, disk. No
// CD-ROM, floppy, USB, sound or serial port, which can name host devices.
var ovfResources = []string{"3", "4", "5", "6", "10", "17", "20"}

type ovfFile struct {
	id, href string
	size     int64 // -1: not given
}

type ovfInfo struct {
	files []ovfFile
	disks []string // diskIds
}

type ovfItem struct{ resourceType, hostResource, connection string }

var hrefID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// checkOVF judges an OVF descriptor against the shape fleet writes:
// only fleet's elements and attributes, File hrefs that are plain member
// names, disks in the streamOptimized format, disk items that name a disk
// of its own DiskSection, NAT networking and no machine settings.
func checkOVF(b []byte) (*ovfInfo, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	info := &ovfInfo{}
	var stack []xml.Name
	var text strings.Builder
	var item *ovfItem
	var diskRefs []string
	systems := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("its XML: %w", err)
		}
		switch t := tok.(type) {
		case xml.ProcInst:
			if t.Target != "xml" {
				return nil, fmt.Errorf("it has the processing instruction %s", show(t.Target))
			}
		case xml.Directive:
			return nil, errors.New("it has a DOCTYPE or other directive, which fleet's OVF does not")
		case xml.StartElement:
			if err := checkOVFElement(t, len(stack)); err != nil {
				return nil, err
			}
			stack = append(stack, t.Name)
			if len(stack) > maxOVFDepth {
				return nil, fmt.Errorf("its elements nest deeper than %d", maxOVFDepth)
			}
			text.Reset()
			attr := func(name string) (string, bool) {
				for _, a := range t.Attr {
					if a.Name.Space == nsOVF && a.Name.Local == name {
						return a.Value, true
					}
				}
				return "", false
			}
			switch t.Name.Local {
			case "File":
				id, _ := attr("id")
				href, _ := attr("href")
				if !memberName.MatchString(href) || strings.Contains(href, "..") {
					return nil, fmt.Errorf("its File href %s is not the plain name of a member", show(href))
				}
				fl := ovfFile{id: id, href: href, size: -1}
				if s, ok := attr("size"); ok {
					if _, err := fmt.Sscan(s, &fl.size); err != nil || fl.size < 0 {
						return nil, fmt.Errorf("its File %s has the size %s", show(href), show(s))
					}
				}
				info.files = append(info.files, fl)
			case "Disk":
				id, _ := attr("diskId")
				ref, _ := attr("fileRef")
				if format, _ := attr("format"); format != vmdkStream {
					return nil, fmt.Errorf("its Disk %s has the format %s, not streamOptimized VMDK", show(id), show(format))
				}
				if !hrefID.MatchString(id) {
					return nil, fmt.Errorf("its Disk id %s is not a name", show(id))
				}
				info.disks = append(info.disks, id)
				diskRefs = append(diskRefs, ref)
			case "Network":
				if name, _ := attr("name"); name != "NAT" {
					return nil, fmt.Errorf("its network %s is not NAT", show(name))
				}
			case "VirtualSystem":
				if systems++; systems > 1 {
					return nil, errors.New("it has more than one VirtualSystem")
				}
			case "Item":
				if item != nil {
					return nil, errors.New("it has an Item inside an Item")
				}
				item = &ovfItem{}
			}
		case xml.CharData:
			if text.Len() < 4096 {
				text.Write(t)
			}
		case xml.EndElement:
			v := strings.TrimSpace(text.String())
			text.Reset()
			if item != nil && t.Name.Space == nsRASD {
				switch t.Name.Local {
				case "ResourceType":
					item.resourceType = v
				case "HostResource":
					item.hostResource = v
				case "Connection":
					item.connection = v
				}
			}
			if t.Name.Local == "Item" && item != nil {
				if err := checkOVFItem(*item, info.disks); err != nil {
					return nil, err
				}
				item = nil
			}
			stack = stack[:len(stack)-1]
		}
	}
	if systems != 1 {
		return nil, errors.New("it has no VirtualSystem")
	}
	if len(info.files) == 0 {
		return nil, errors.New("it references no file")
	}
	for i, ref := range diskRefs {
		if !slices.ContainsFunc(info.files, func(f ovfFile) bool { return f.id == ref }) {
			return nil, fmt.Errorf("its Disk %s refers to %s, no File of its References", show(info.disks[i]), show(ref))
		}
	}
	return info, nil
}

// checkOVFElement: an element fleet's OVF has, with only its attributes.
func checkOVFElement(t xml.StartElement, depth int) error {
	n := t.Name
	if n.Space == nsVBox || n.Local == "Machine" {
		return fmt.Errorf("it has a VirtualBox %s element: machine settings (shared folders, media, ports) fleet's OVF never carries", show(n.Local))
	}
	if !slices.Contains(ovfElements[n.Space], n.Local) {
		return fmt.Errorf("it has the element %s in the namespace %s, which fleet's OVF does not", show(n.Local), show(n.Space))
	}
	if (depth == 0) != (n.Space == nsOVF && n.Local == "Envelope") {
		return errors.New("its root is not one OVF Envelope")
	}
	seen := map[string]bool{}
	for _, a := range t.Attr {
		switch {
		case a.Name.Space == "xmlns" || a.Name.Space == "" && a.Name.Local == "xmlns":
			continue // a namespace declaration
		case a.Name.Space == nsXML && a.Name.Local == "lang",
			a.Name.Space == nsOVF && slices.Contains(ovfAttrs, a.Name.Local):
		default:
			return fmt.Errorf("its %s element has the attribute %s, which fleet's OVF does not", show(n.Local), show(a.Name.Local))
		}
		// A reader that matches attributes by local name must see one.
		if seen[a.Name.Local] {
			return fmt.Errorf("its %s element has the attribute %s twice", show(n.Local), show(a.Name.Local))
		}
		seen[a.Name.Local] = true
	}
	return nil
}

// checkOVFItem: hardware fleet's OVF lists, a disk item naming one of its
// own disks, a network adapter on NAT.
func checkOVFItem(it ovfItem, disks []string) error {
	if !slices.Contains(ovfResources, it.resourceType) {
		return fmt.Errorf("it has a hardware item of type %s (CD-ROM, floppy, USB, sound, serial or other), which fleet's OVF does not", show(it.resourceType))
	}
	if it.resourceType == "17" {
		id, ok := strings.CutPrefix(strings.TrimPrefix(it.hostResource, "ovf:"), "/disk/")
		if !ok || !slices.Contains(disks, id) {
			return fmt.Errorf("its disk item's host resource %s is none of its own disks", show(it.hostResource))
		}
	} else if it.hostResource != "" {
		return fmt.Errorf("its item of type %s names the host resource %s", it.resourceType, show(it.hostResource))
	}
	if it.resourceType == "10" && it.connection != "NAT" {
		return fmt.Errorf("its network adapter is on %s, not NAT", show(it.connection))
	}
	return nil
}
