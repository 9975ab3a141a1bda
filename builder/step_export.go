package builder

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepExport writes the requested distributable formats of the verified
// disk: a compressed qcow2, a VirtualBox OVA (stream-optimized VMDK plus
// OVF: 2 CPUs, 4 GiB, NAT, no audio, no USB) and a Vagrant box for the
// virtualbox provider.
//
// Reads "config", "qcow2", "workdir", "version". Writes "outputs" (kind to
// path in the workdir; StepPublish moves them into the store). Cleanup:
// files live in the workdir.
type StepExport struct{}

func (s *StepExport) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	disk := state.Get("qcow2").(string)
	dir := filepath.Join(state.Get("workdir").(string), "exports")
	if err := ensureDir(dir); err != nil {
		return halt(state, err)
	}
	base := cfg.Name + "-" + state.Get("version").(string)
	outputs := map[string]string{}
	var vmdk string
	for _, kind := range cfg.Outputs {
		cfg.say("export: %s...", kind)
		var err error
		switch kind {
		case "qcow2":
			out := filepath.Join(dir, base+".qcow2")
			_, err = cfg.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: ConvertArgs("qcow2", disk, out, true)})
			outputs[kind] = out
		case "ova", "vagrant":
			if vmdk == "" {
				vmdk = filepath.Join(dir, base+"-disk001.vmdk")
				if _, err = cfg.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: VMDKArgs(disk, vmdk)}); err != nil {
					break
				}
			}
			if kind == "ova" {
				outputs[kind] = filepath.Join(dir, base+".ova")
				err = writeOVA(outputs[kind], base, vmdk, cfg.DiskSizeGiB)
			} else {
				outputs[kind] = filepath.Join(dir, base+".box")
				err = writeVagrantBox(outputs[kind], base, vmdk, cfg.DiskSizeGiB)
			}
		}
		if err != nil {
			return halt(state, fmt.Errorf("export %s: %w", kind, err))
		}
	}
	if vmdk != "" {
		_ = os.Remove(vmdk) // it lives on inside the OVA and the box
	}
	state.Put("outputs", outputs)
	return multistep.ActionContinue
}

func (s *StepExport) Cleanup(multistep.StateBag) {}

// VMDKArgs builds the qemu-img command for a stream-optimized VMDK, the
// disk format OVF archives carry.
func VMDKArgs(in, out string) []string {
	return []string{"convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", in, out}
}

func ovfFor(name, vmdk, diskName string, diskGiB int) ([]byte, error) {
	fi, err := os.Stat(vmdk)
	if err != nil {
		return nil, err
	}
	return OVF(OVFParams{Name: name, DiskFile: diskName, DiskFileBytes: fi.Size(),
		CapacityBytes: int64(diskGiB) << 30, CPUs: 2, MemoryMiB: 4096})
}

// writeOVA writes an OVA: a tar whose first member is the OVF.
func writeOVA(path, name, vmdk string, diskGiB int) error {
	ovf, err := ovfFor(name, vmdk, filepath.Base(vmdk), diskGiB)
	if err != nil {
		return err
	}
	return writeTar(path, false, []tarMember{{name + ".ovf", ovf, ""}, {filepath.Base(vmdk), nil, vmdk}})
}

// writeVagrantBox writes a virtualbox-provider box: metadata.json, the OVF
// and disk under the names Vagrant looks for, and a Vagrantfile.
func writeVagrantBox(path, name, vmdk string, diskGiB int) error {
	ovf, err := ovfFor(name, vmdk, "box-disk001.vmdk", diskGiB)
	if err != nil {
		return err
	}
	meta, _ := json.Marshal(map[string]string{"provider": "virtualbox"})
	vf := []byte(images.VagrantBoxVagrantfile) // the store refuses any other
	return writeTar(path, true, []tarMember{
		{"metadata.json", meta, ""}, {"Vagrantfile", vf, ""}, {"box.ovf", ovf, ""}, {"box-disk001.vmdk", nil, vmdk},
	})
}

type tarMember struct {
	name string
	data []byte // or, when nil, the contents of file
	file string
}

func writeTar(path string, gz bool, members []tarMember) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, m := range members {
		if err := addTarMember(tw, m); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	return f.Close()
}

func addTarMember(tw *tar.Writer, m tarMember) error {
	if m.data != nil {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data))}); err != nil {
			return err
		}
		_, err := tw.Write(m.data)
		return err
	}
	src, err := os.Open(m.file)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: fi.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, src)
	return err
}
