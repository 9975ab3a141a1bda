// Package virtualbox is the VirtualBox driver: the baked OVA is imported once
// per image version as a template VM with a snapshot, and every machine is a
// linked clone of that snapshot.
//
// VirtualBox cannot run on the machines this project is tested on. The
// driver is tested against a strict fake of VBoxManage (vboxfake/) that keeps
// state and rejects what VirtualBox rejects, and with table tests of every
// argument list; it has not been run against real VirtualBox by its tests.
// The README lists the commands to check it by hand.
//
// VBoxManage argument lists are built here by pure functions, in the
// syntax of VirtualBox 7.0 to 7.2 (`VBoxManage <command> --help`).
package virtualbox

import (
	"fmt"
	"strconv"
)

// Names the driver gives things inside VirtualBox.
const (
	// BaseSnapshot is the template's snapshot every clone links to.
	BaseSnapshot = "fleet-base"
	// SeedController is the IDE controller the driver adds to each clone
	// for its NoCloud seed ISO, so it never depends on the controller
	// names an OVA import happens to create.
	SeedController = "FleetSeed"
)

func versionArgs() []string { return []string{"--version"} }

func listVMsArgs() []string { return []string{"list", "vms"} }

// importArgs imports the OVA's one virtual system as the template.
func importArgs(ova, template, baseFolder string) []string {
	return []string{"import", ova, "--vsys", "0", "--vmname", template, "--basefolder", baseFolder}
}

func takeSnapshotArgs(vmName string) []string {
	return []string{"snapshot", vmName, "take", BaseSnapshot}
}

func listSnapshotsArgs(vmName string) []string {
	return []string{"snapshot", vmName, "list", "--machinereadable"}
}

// cloneArgs makes a linked clone: a differencing disk on the template's
// snapshot, registered so it can start.
func cloneArgs(template, name, baseFolder string) []string {
	return []string{"clonevm", template, "--snapshot", BaseSnapshot, "--options", "link",
		"--name", name, "--basefolder", baseFolder, "--register"}
}

// modifyArgs shapes a clone: its size, NAT with SSH forwarded from a host
// port on loopback only, no audio or USB, the serial console to a file.
func modifyArgs(name string, cpus, memoryMiB, sshPort int, serialLog string) []string {
	return []string{"modifyvm", name,
		"--cpus", strconv.Itoa(cpus),
		"--memory", strconv.Itoa(memoryMiB),
		"--audio-enabled", "off",
		"--usb-ohci", "off", "--usb-ehci", "off", "--usb-xhci", "off",
		"--nic1", "nat",
		"--nat-pf1", fmt.Sprintf("ssh,tcp,127.0.0.1,%d,,22", sshPort),
		"--uart1", "0x3F8", "4",
		"--uart-mode1", "file", serialLog,
		"--boot1", "disk", "--boot2", "none", "--boot3", "none", "--boot4", "none",
	}
}

func addSeedControllerArgs(name string) []string {
	return []string{"storagectl", name, "--name", SeedController, "--add", "ide"}
}

func attachSeedArgs(name, iso string) []string {
	return []string{"storageattach", name, "--storagectl", SeedController,
		"--port", "0", "--device", "0", "--type", "dvddrive", "--medium", iso}
}

// shareArgs shares dir with the guest as the shareTag folder;
// --readonly is enforced by VirtualBox on the host side.
func shareArgs(name, dir string, writable bool) []string {
	args := []string{"sharedfolder", "add", name, "--name", shareTag, "--hostpath", dir}
	if !writable {
		args = append(args, "--readonly")
	}
	return args
}

func startArgs(name string) []string { return []string{"startvm", name, "--type", "headless"} }

func acpiShutdownArgs(name string) []string { return []string{"controlvm", name, "acpipowerbutton"} }

func powerOffArgs(name string) []string { return []string{"controlvm", name, "poweroff"} }

func infoArgs(name string) []string { return []string{"showvminfo", name, "--machinereadable"} }

// unregisterArgs removes a VM with its disks (for a clone, only its
// differencing disk).
func unregisterArgs(name string) []string { return []string{"unregistervm", name, "--delete"} }

func closeDVDArgs(iso string) []string { return []string{"closemedium", "dvd", iso} }

// registryCommands change VirtualBox's registry (VirtualBox.xml, the media
// registry): two at once fail with lock errors, so the driver runs them
// behind one host-wide lock.
var registryCommands = map[string]bool{
	"import": true, "snapshot": true, "clonevm": true, "registervm": true,
	"modifyvm": true, "storagectl": true, "storageattach": true, "unregistervm": true, "closemedium": true,
	"sharedfolder": true,
}
