package virtualbox

import (
	"slices"
	"strings"
	"testing"
)

// Each list against the VBoxManage 7.0–7.2 manual's synopsis for its
// command (the 7.0 renames included: --audio-enabled, --usb-ohci,
// --nat-pf1, --uart-mode1).
func TestArgumentLists(t *testing.T) {
	for _, c := range []struct {
		name string
		got  []string
		want string
	}{
		{"version", versionArgs(), "--version"},
		{"list", listVMsArgs(), "list vms"},
		{"import", importArgs("/i/d.ova", "tpl", "/h/templates"), "import /i/d.ova --vsys 0 --vmname tpl --basefolder /h/templates"},
		{"snapshot take", takeSnapshotArgs("tpl"), "snapshot tpl take fleet-base"},
		{"snapshot list", listSnapshotsArgs("tpl"), "snapshot tpl list --machinereadable"},
		{"linked clone", cloneArgs("tpl", "p-1", "/f/p-1"), "clonevm tpl --snapshot fleet-base --options link --name p-1 --basefolder /f/p-1 --register"},
		{"modifyvm", modifyArgs("p-1", 2, 4096, 40022, "/f/p-1/serial.log"),
			"modifyvm p-1 --cpus 2 --memory 4096 --audio-enabled off --usb-ohci off --usb-ehci off --usb-xhci off --nic1 nat " +
				"--nat-pf1 ssh,tcp,127.0.0.1,40022,,22 --uart1 0x3F8 4 --uart-mode1 file /f/p-1/serial.log --boot1 disk --boot2 none --boot3 none --boot4 none"},
		{"seed controller", addSeedControllerArgs("p-1"), "storagectl p-1 --name FleetSeed --add ide"},
		{"seed dvd", attachSeedArgs("p-1", "/f/p-1/seed.iso"), "storageattach p-1 --storagectl FleetSeed --port 0 --device 0 --type dvddrive --medium /f/p-1/seed.iso"},
		{"share read-only", shareArgs("p-1", "/src/proj", false), "sharedfolder add p-1 --name workspace --hostpath /src/proj --readonly"},
		{"share writable", shareArgs("p-1", "/src/proj", true), "sharedfolder add p-1 --name workspace --hostpath /src/proj"},
		{"start", startArgs("p-1"), "startvm p-1 --type headless"},
		{"acpi", acpiShutdownArgs("p-1"), "controlvm p-1 acpipowerbutton"},
		{"poweroff", powerOffArgs("p-1"), "controlvm p-1 poweroff"},
		{"info", infoArgs("p-1"), "showvminfo p-1 --machinereadable"},
		{"unregister", unregisterArgs("p-1"), "unregistervm p-1 --delete"},
		{"close dvd", closeDVDArgs("/f/p-1/seed.iso"), "closemedium dvd /f/p-1/seed.iso"},
	} {
		if got := strings.Join(c.got, " "); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestPathsStayOneArgument(t *testing.T) {
	args := importArgs("/my ovas/d.ova", "tpl", "/a b")
	if !slices.Contains(args, "/my ovas/d.ova") || !slices.Contains(args, "/a b") {
		t.Errorf("%q", args)
	}
}

func TestRegistryCommandsAreLocked(t *testing.T) {
	for _, a := range [][]string{importArgs("o", "t", "b"), takeSnapshotArgs("t"), cloneArgs("t", "n", "b"), modifyArgs("n", 1, 1, 1, "s"),
		addSeedControllerArgs("n"), attachSeedArgs("n", "i"), unregisterArgs("n"), closeDVDArgs("i"), shareArgs("n", "d", false)} {
		if !registryCommands[a[0]] {
			t.Errorf("%s changes the registry but is not behind the lock", a[0])
		}
	}
	for _, a := range [][]string{startArgs("n"), infoArgs("n"), powerOffArgs("n"), listVMsArgs()} {
		if registryCommands[a[0]] {
			t.Errorf("%s would serialize needlessly", a[0])
		}
	}
}

func TestScanError(t *testing.T) {
	out := []byte("Waiting for VM \"p-1\" to power on...\n" +
		"VBoxManage: error: The virtual machine 'p-1' has terminated unexpectedly during startup with exit code 1 (0x1)\n" +
		"VBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component MachineWrap, interface IMachine\n")
	e := scanError([]string{"startvm", "p-1"}, out)
	if e == nil || e.Message != "The virtual machine 'p-1' has terminated unexpectedly during startup with exit code 1 (0x1)" || e.Code != "NS_ERROR_FAILURE" {
		t.Fatalf("%+v", e)
	}
	if scanError(nil, []byte("0%...100%\nVM \"p-1\" has been successfully started.\n")) != nil {
		t.Error("success output read as an error")
	}
	nf := scanError([]string{"showvminfo", "x"}, []byte("VBoxManage: error: Could not find a registered machine named 'x'\nVBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap\n"))
	if !notFound(nf) || transient(nf) {
		t.Errorf("not found: %+v", nf)
	}
	for msg, want := range map[string]bool{
		"The object is not ready": true,
		"The machine 'p-1' is already locked for a session (or being unlocked)": true,
		"Could not find a registered machine named 'x'":                         false,
		"Appliance read failed": false,
	} {
		if got := transient(&Error{Message: msg}); got != want {
			t.Errorf("transient(%q) = %v", msg, got)
		}
	}
}

func TestMachineReadable(t *testing.T) {
	m := parseMachineReadable("name=\"p-1\"\nVMState=\"running\"\ncpus=2\nForwarding(0)=\"ssh,tcp,127.0.0.1,40022,,22\"\n")
	if m["VMState"] != "running" || m["cpus"] != "2" || m["Forwarding(0)"] != "ssh,tcp,127.0.0.1,40022,,22" {
		t.Errorf("%v", m)
	}
	l := parseVMList("\"fleet-tpl-x\" {0b3c6f2e-1111-2222-3333-444455556666}\n\"p 1\" {0b3c6f2e-1111-2222-3333-444455556667}\n<inaccessible> {x}\n")
	if !l["fleet-tpl-x"] || !l["p 1"] || len(l) != 2 {
		t.Errorf("%v", l)
	}
}
