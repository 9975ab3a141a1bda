// Package ovatest writes small exports for tests, in the shape fleet's
// builder writes them (builder/step_export.go) and images.CheckOutputFile
// takes, without qemu-img.
package ovatest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/vmdk/vmdktest"
)

// OVF is builder/ovf.go's envelope for one disk, trimmed to what the
// checks look at (images' tests also run the builder's own).
func OVF(href string, size int) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="%s" ovf:size="%d"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:capacity="1073741824" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="NAT"><Description>NAT network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="debian-12-v1">
    <Info>agentfleet base image</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Connection>NAT</rasd:Connection><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, href, size)
}

// OVA is an OVA as step_export.go lays it out for base (e.g.
// "debian-12-v1"): base.ovf, then base-disk001.vmdk, a 1 MiB
// streamOptimized disk.
func OVA(base string) []byte {
	disk := base + "-disk001.vmdk"
	vmdk := vmdktest.Build(vmdktest.Options{Descriptor: vmdktest.Descriptor(disk, 2048)})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range []struct {
		name string
		body []byte
	}{{base + ".ovf", []byte(OVF(disk, len(vmdk)))}, {disk, vmdk}} {
		tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.body))})
		tw.Write(m.body)
	}
	tw.Close()
	return b.Bytes()
}

// WriteOVA writes OVA at path, named for its file ("x.ova": "x"), and
// returns path.
func WriteOVA(t testing.TB, path string) string {
	t.Helper()
	if err := os.WriteFile(path, OVA(strings.TrimSuffix(filepath.Base(path), ".ova")), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
