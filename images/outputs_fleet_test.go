package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vmdk/vmdktest"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// The builder's own export step, run for real (qemu-img makes the
// streamOptimized VMDK), writes an OVA and a Vagrant box that pass the
// checks a pull and a use make: the checks take fleet's shape.
func TestFleetExportsPass(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img")
	}
	work := t.TempDir()
	disk := filepath.Join(work, "disk.qcow2")
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, b)
	}
	cfg := &builder.Config{Name: "debian-12", DiskSizeGiB: 1, Outputs: []string{"qcow2", "ova", "vagrant"}, Runner: execx.Local{}}
	state := new(multistep.BasicStateBag)
	state.Put("config", cfg)
	state.Put("qcow2", disk)
	state.Put("workdir", work)
	state.Put("version", "20261201-000000")
	if a := (&builder.StepExport{}).Run(context.Background(), state); a != multistep.ActionContinue {
		t.Fatalf("export: %v", state.Get("error"))
	}
	outputs := state.Get("outputs").(map[string]string)
	if len(outputs) != 3 {
		t.Fatalf("outputs %v", outputs)
	}
	for kind, p := range outputs {
		if err := images.CheckOutputFile(kind, p); err != nil {
			t.Errorf("fleet's own %s: %v", kind, err)
		}
	}
	// Into a store, promoted, handed out: the use-time checks pass too.
	s := images.Store{Root: filepath.Join(work, "images")}
	m := images.Manifest{Name: "debian-12", Version: "20261201-000000", Outputs: map[string]images.Output{}}
	for kind, p := range outputs {
		m.Outputs[kind] = images.Output{File: filepath.Base(p)}
	}
	if _, err := s.Add(m, disk, outputs); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote("debian-12", m.Version); err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve("debian-12")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.OutputPath(images.OutputOVA); err != nil {
		t.Fatal(err)
	}
}

// builder.OVF, the envelope every export carries, passes with a VMDK of
// the shape qemu-img writes, without qemu-img; and a vbox:Machine block
// added to it does not.
func TestFleetOVFPasses(t *testing.T) {
	vmdk := vmdktest.Build(vmdktest.Options{Descriptor: vmdktest.Descriptor("debian-12-v1-disk001.vmdk", 2048)})
	ovf, err := builder.OVF(builder.OVFParams{Name: "debian-12-v1", DiskFile: "debian-12-v1-disk001.vmdk", DiskFileBytes: int64(len(vmdk)),
		CapacityBytes: 1 << 30, CPUs: 2, MemoryMiB: 4096})
	if err != nil {
		t.Fatal(err)
	}
	write := func(ovf []byte) string {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, m := range []struct {
			name string
			body []byte
		}{{"debian-12-v1.ovf", ovf}, {"debian-12-v1-disk001.vmdk", vmdk}} {
			tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.body))})
			tw.Write(m.body)
		}
		tw.Close()
		p := filepath.Join(t.TempDir(), "debian-12-v1.ova")
		os.WriteFile(p, b.Bytes(), 0o644)
		return p
	}
	if err := images.CheckOutputFile(images.OutputOVA, write(ovf)); err != nil {
		t.Fatalf("builder.OVF: %v", err)
	}
	machine := []byte(`<vbox:Machine xmlns:vbox="http://www.virtualbox.org/ovf/machine"><Hardware><SharedFolders><SharedFolder name="h" hostPath="/home"/></SharedFolders></Hardware></vbox:Machine></VirtualSystem>`)
	hostile := bytes.Replace(ovf, []byte("</VirtualSystem>"), machine, 1)
	if err := images.CheckOutputFile(images.OutputOVA, write(hostile)); err == nil {
		t.Fatal("an OVF with a vbox:Machine block passed")
	}
}
