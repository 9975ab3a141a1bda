// Command vboxfake is a strict fake of VBoxManage for the VirtualBox
// driver's tests: VirtualBox cannot run where this project is tested.
//
// It keeps a registry in $FAKE_VBOX_HOME/state.json and rejects what real
// VirtualBox rejects: a linked clone without a snapshot, a clone of an
// unregistered VM, deleting a template that still has linked clones,
// changing a running VM, unknown options, and two registry-changing calls
// at once (answered with a lock error, as VirtualBox's registry does). It
// prints VBoxManage's output formats, including errors at exit status 0.
//
// $FAKE_VBOX_FAULTS injects failures (comma-separated): not-ready=N (the
// first N showvminfo calls answer "object is not ready"), import-fails,
// startvm-exit0 (startvm fails but exits 0), vtx (startvm reports KVM
// holding VT-x, exit 0). $FAKE_VBOX_GUEST=1 makes startvm run a fake
// guest: an SSH server on the NAT port with the seed ISO's pinned host key
// that accepts only the seed's user key.
//
// Every call is appended to $FAKE_VBOX_HOME/calls.log with its start and
// end times, so tests can check what ran in parallel.
package main

import (
	"archive/tar"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type machine struct {
	UUID       string   `json:"uuid"`
	State      string   `json:"state"` // poweroff | running
	Folder     string   `json:"folder"`
	Snapshots  []string `json:"snapshots,omitempty"`
	Parent     string   `json:"parent,omitempty"` // linked clone of
	Clones     []string `json:"clones,omitempty"`
	CPUs       int      `json:"cpus"`
	MemoryMiB  int      `json:"memory"`
	NATRule    string   `json:"nat_rule,omitempty"`
	Ctls       []string `json:"controllers,omitempty"`
	DVD        string   `json:"dvd,omitempty"`
	Shares     []string `json:"shares,omitempty"` // name=hostpath[:ro]
	GuestPID   int      `json:"guest_pid,omitempty"`
	Serial     string   `json:"serial,omitempty"`
	Registered bool     `json:"registered"`
}

type state struct {
	Machines map[string]*machine `json:"machines"`
	Counters map[string]int      `json:"counters"`
}

var home = os.Getenv("FAKE_VBOX_HOME")

func main() {
	if len(os.Args) > 1 && os.Args[1] == "__guest" {
		runGuest(os.Args[2:])
		return
	}
	start := time.Now()
	code := run(os.Args[1:])
	if home != "" {
		f, err := os.OpenFile(filepath.Join(home, "calls.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			fmt.Fprintf(f, "%d %d %d %s\n", start.UnixNano(), time.Now().UnixNano(), code, strings.Join(os.Args[1:], " "))
			f.Close()
		}
	}
	os.Exit(code)
}

// vboxError prints an error the way VBoxManage does: a message, then
// details with the COM code and a context line.
func vboxError(code string, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "VBoxManage: error: "+format+"\n", args...)
	if code != "" {
		fmt.Fprintf(os.Stderr, "VBoxManage: error: Details: code %s (0x80bb0001), component SessionMachine, interface IMachine\n", code)
	}
	fmt.Fprintf(os.Stderr, "VBoxManage: error: Context: \"%s\" at line 1 of file VBoxManage.cpp\n", strings.Join(os.Args[1:2], ""))
}

var registryCommands = map[string]bool{
	"import": true, "snapshot": true, "clonevm": true, "registervm": true, "modifyvm": true,
	"storagectl": true, "storageattach": true, "unregistervm": true, "closemedium": true, "sharedfolder": true,
}

func run(args []string) int {
	if home == "" {
		fmt.Fprintln(os.Stderr, "vboxfake: FAKE_VBOX_HOME is not set")
		return 2
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "Usage: VBoxManage <command> ...")
		return 2
	}
	if args[0] == "--version" {
		v := os.Getenv("FAKE_VBOX_VERSION")
		if v == "" {
			v = "7.1.4r165100"
		}
		fmt.Println(v)
		return 0
	}
	// The registry takes one writer: a second concurrent change fails
	// the way VirtualBox's does, which is what the driver's lock is for.
	// snapshot list only reads.
	if registryCommands[args[0]] && !(args[0] == "snapshot" && len(args) > 2 && args[2] == "list") {
		busy := filepath.Join(home, "registry.busy")
		f, err := os.OpenFile(busy, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			vboxError("VBOX_E_INVALID_OBJECT_STATE", "The VirtualBox registry is already locked by another VBoxManage process (or being unlocked)")
			return 1
		}
		f.Close()
		defer os.Remove(busy)
		delay, _ := strconv.Atoi(os.Getenv("FAKE_VBOX_DELAY_MS"))
		if delay == 0 {
			delay = 40
		}
		time.Sleep(time.Duration(delay) * time.Millisecond)
	}
	unlock := lockState()
	defer unlock()
	st := load()
	code := dispatch(st, args)
	save(st)
	return code
}

func lockState() func() {
	os.MkdirAll(home, 0o700)
	f, err := os.OpenFile(filepath.Join(home, "state.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		panic(err)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
	return func() { f.Close() }
}

func load() *state {
	st := &state{Machines: map[string]*machine{}, Counters: map[string]int{}}
	if b, err := os.ReadFile(filepath.Join(home, "state.json")); err == nil {
		json.Unmarshal(b, st)
	}
	return st
}

func save(st *state) {
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := filepath.Join(home, "state.json.tmp")
	os.WriteFile(tmp, b, 0o600)
	os.Rename(tmp, filepath.Join(home, "state.json"))
}

func fault(name string) (string, bool) {
	for _, f := range strings.Split(os.Getenv("FAKE_VBOX_FAULTS"), ",") {
		k, v, _ := strings.Cut(f, "=")
		if k == name {
			return v, true
		}
	}
	return "", false
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// opts parses "--key value" pairs (and --key=value), refusing keys not
// in allowed. arity gives options that take more than one value.
func opts(args []string, allowed map[string]int) (map[string][]string, bool) {
	out := map[string][]string{}
	for i := 0; i < len(args); i++ {
		k := args[i]
		if !strings.HasPrefix(k, "--") {
			vboxError("", "Invalid parameter '%s'", k)
			return nil, false
		}
		if key, val, ok := strings.Cut(k, "="); ok {
			if _, known := allowed[key]; !known {
				vboxError("", "Unknown option: %s", key)
				return nil, false
			}
			out[key] = append(out[key], val)
			continue
		}
		n, known := allowed[k]
		if !known {
			vboxError("", "Unknown option: %s", k)
			return nil, false
		}
		if i+n >= len(args) {
			vboxError("", "Missing argument to '%s'", k)
			return nil, false
		}
		if n == 0 {
			out[k] = []string{"on"} // a flag
			continue
		}
		out[k] = append(out[k], args[i+1:i+1+n]...)
		i += n
	}
	return out, true
}

func find(st *state, name string) *machine {
	m := st.Machines[name]
	if m == nil || !m.Registered {
		vboxError("VBOX_E_OBJECT_NOT_FOUND", "Could not find a registered machine named '%s'", name)
		return nil
	}
	return m
}

func notRunning(m *machine, name string) bool {
	if m.State == "running" {
		vboxError("VBOX_E_INVALID_VM_STATE", "The machine '%s' is not mutable (state is Running)", name)
		return false
	}
	return true
}

var natRule = regexp.MustCompile(`^[^,]*,(tcp|udp),[^,]*,\d{1,5},[^,]*,\d{1,5}$`)

// minArgs is how many arguments a command needs before its options.
var minArgs = map[string]int{"import": 1, "snapshot": 2, "clonevm": 1, "modifyvm": 2, "storagectl": 1,
	"storageattach": 1, "startvm": 1, "controlvm": 2, "showvminfo": 1, "unregistervm": 1}

func dispatch(st *state, args []string) int {
	cmd, rest := args[0], args[1:]
	if len(rest) < minArgs[cmd] {
		vboxError("", "Not enough arguments for \"%s\"", cmd)
		return 2
	}
	switch cmd {
	case "list":
		if len(rest) != 1 || rest[0] != "vms" {
			vboxError("", "Invalid parameter '%s'", strings.Join(rest, " "))
			return 2
		}
		names := make([]string, 0, len(st.Machines))
		for n, m := range st.Machines {
			if m.Registered {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Printf("\"%s\" {%s}\n", n, st.Machines[n].UUID)
		}
		return 0

	case "import":
		o, ok := opts(rest[1:], map[string]int{"--vsys": 1, "--vmname": 1, "--basefolder": 1})
		if !ok {
			return 2
		}
		if _, bad := fault("import-fails"); bad || !isOVA(rest[0]) {
			vboxError("VBOX_E_FILE_ERROR", "Appliance read failed\nVBoxManage: error: Error reading \"%s\": VERR_TAR_UNEXPECTED_EOS", rest[0])
			return 1
		}
		name := first(o["--vmname"])
		if m := st.Machines[name]; m != nil && m.Registered {
			vboxError("VBOX_E_FILE_ERROR", "Machine settings file '%s.vbox' already exists", name)
			return 1
		}
		folder := filepath.Join(first(o["--basefolder"]), name)
		os.MkdirAll(folder, 0o700)
		os.WriteFile(filepath.Join(folder, name+".vbox"), []byte("<VirtualBox/>\n"), 0o600)
		st.Machines[name] = &machine{UUID: uuid(), State: "poweroff", Folder: folder, CPUs: 2, MemoryMiB: 4096, Registered: true}
		fmt.Printf("0%%...10%%...20%%...30%%...40%%...50%%...60%%...70%%...80%%...90%%...100%%\nInterpreting %s...\nOK.\n0%%...100%%\nSuccessfully imported the appliance.\n", rest[0])
		return 0

	case "snapshot":
		m := find(st, rest[0])
		if m == nil {
			return 1
		}
		switch rest[1] {
		case "take":
			if len(rest) < 3 {
				vboxError("", "Missing snapshot name")
				return 2
			}
			m.Snapshots = append(m.Snapshots, rest[2])
			fmt.Printf("0%%...10%%...100%%\nSnapshot taken. UUID: %s\n", uuid())
			return 0
		case "list":
			if len(m.Snapshots) == 0 {
				fmt.Println("This machine does not have any snapshots")
				return 1
			}
			for i, s := range m.Snapshots {
				suffix := ""
				if i > 0 {
					suffix = fmt.Sprintf("-%d", i)
				}
				fmt.Printf("SnapshotName%s=\"%s\"\nSnapshotUUID%s=\"%s\"\n", suffix, s, suffix, uuid())
			}
			fmt.Printf("CurrentSnapshotName=\"%s\"\n", m.Snapshots[len(m.Snapshots)-1])
			return 0
		}
		vboxError("", "Invalid parameter '%s'", rest[1])
		return 2

	case "clonevm":
		o, ok := opts(rest[1:], map[string]int{"--snapshot": 1, "--options": 1, "--name": 1, "--basefolder": 1, "--register": 0, "--mode": 1})
		if !ok {
			return 2
		}
		src := find(st, rest[0])
		if src == nil {
			return 1
		}
		link := slices.Contains(strings.Split(first(o["--options"]), ","), "link")
		snap := first(o["--snapshot"])
		if link && snap == "" {
			vboxError("E_INVALIDARG", "Linked clone requires a snapshot to be specified (--snapshot)")
			return 1
		}
		if snap != "" && !slices.Contains(src.Snapshots, snap) {
			vboxError("VBOX_E_OBJECT_NOT_FOUND", "Could not find a snapshot named '%s'", snap)
			return 1
		}
		name := first(o["--name"])
		if m := st.Machines[name]; m != nil && m.Registered {
			vboxError("VBOX_E_FILE_ERROR", "Machine settings file '%s.vbox' already exists", name)
			return 1
		}
		folder := filepath.Join(first(o["--basefolder"]), name)
		os.MkdirAll(folder, 0o700)
		os.WriteFile(filepath.Join(folder, name+".vbox"), []byte("<VirtualBox/>\n"), 0o600)
		st.Machines[name] = &machine{UUID: uuid(), State: "poweroff", Folder: folder, CPUs: src.CPUs, MemoryMiB: src.MemoryMiB,
			Registered: o["--register"] != nil}
		if link {
			st.Machines[name].Parent = rest[0]
			src.Clones = append(src.Clones, name)
		}
		fmt.Printf("0%%...10%%...100%%\nMachine has been successfully cloned as \"%s\"\n", name)
		return 0

	case "modifyvm":
		o, ok := opts(rest[1:], map[string]int{"--cpus": 1, "--memory": 1, "--audio-enabled": 1, "--usb-ohci": 1, "--usb-ehci": 1,
			"--usb-xhci": 1, "--nic1": 1, "--nat-pf1": 1, "--uart1": 2, "--uart-mode1": 2, "--boot1": 1, "--boot2": 1, "--boot3": 1, "--boot4": 1})
		if !ok {
			return 2
		}
		m := find(st, rest[0])
		if m == nil || !notRunning(m, rest[0]) {
			return 1
		}
		for _, k := range []string{"--audio-enabled", "--usb-ohci", "--usb-ehci", "--usb-xhci"} {
			if v := first(o[k]); v != "" && v != "on" && v != "off" {
				vboxError("", "Invalid %s argument '%s'", k, v)
				return 1
			}
		}
		if v := first(o["--cpus"]); v != "" {
			m.CPUs, _ = strconv.Atoi(v)
		}
		if v := first(o["--memory"]); v != "" {
			m.MemoryMiB, _ = strconv.Atoi(v)
		}
		if v := first(o["--nat-pf1"]); v != "" {
			if !natRule.MatchString(v) {
				vboxError("", "Invalid NAT port-forwarding rule '%s'", v)
				return 1
			}
			m.NATRule = v
		}
		if v := o["--uart-mode1"]; len(v) == 2 && v[0] == "file" {
			m.Serial = v[1]
		}
		return 0

	case "storagectl":
		o, ok := opts(rest[1:], map[string]int{"--name": 1, "--add": 1})
		if !ok {
			return 2
		}
		m := find(st, rest[0])
		if m == nil || !notRunning(m, rest[0]) {
			return 1
		}
		name := first(o["--name"])
		if slices.Contains(m.Ctls, name) {
			vboxError("VBOX_E_OBJECT_IN_USE", "Storage controller named '%s' already exists", name)
			return 1
		}
		m.Ctls = append(m.Ctls, name)
		return 0

	case "storageattach":
		o, ok := opts(rest[1:], map[string]int{"--storagectl": 1, "--port": 1, "--device": 1, "--type": 1, "--medium": 1})
		if !ok {
			return 2
		}
		m := find(st, rest[0])
		if m == nil || !notRunning(m, rest[0]) {
			return 1
		}
		if !slices.Contains(m.Ctls, first(o["--storagectl"])) {
			vboxError("VBOX_E_OBJECT_NOT_FOUND", "Could not find a controller named '%s'", first(o["--storagectl"]))
			return 1
		}
		if _, err := os.Stat(first(o["--medium"])); err != nil {
			vboxError("VBOX_E_FILE_ERROR", "Could not find file for the medium '%s' (VERR_FILE_NOT_FOUND)", first(o["--medium"]))
			return 1
		}
		m.DVD = first(o["--medium"])
		return 0

	case "startvm":
		if _, ok := opts(rest[1:], map[string]int{"--type": 1}); !ok {
			return 2
		}
		m := find(st, rest[0])
		if m == nil {
			return 1
		}
		if m.Parent != "" {
			if p := st.Machines[m.Parent]; p == nil || !p.Registered {
				vboxError("VBOX_E_OBJECT_NOT_FOUND", "Could not open the medium: its parent (the disk of '%s') is inaccessible", m.Parent)
				return 1
			}
		}
		if m.State == "running" {
			vboxError("VBOX_E_INVALID_OBJECT_STATE", "The machine '%s' is already locked by a session (or being locked or unlocked)", rest[0])
			return 1
		}
		fmt.Printf("Waiting for VM \"%s\" to power on...\n", rest[0])
		if _, bad := fault("vtx"); bad {
			vboxError("", "VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE).")
			return 0 // as VBoxManage does for some start failures
		}
		if _, bad := fault("startvm-exit0"); bad {
			vboxError("", "The virtual machine '%s' has terminated unexpectedly during startup with exit code 1 (0x1)", rest[0])
			return 0
		}
		m.State = "running"
		if os.Getenv("FAKE_VBOX_GUEST") == "1" {
			pid, err := startGuest(rest[0], m)
			if err != nil {
				m.State = "poweroff"
				vboxError("", "fake guest: %v", err)
				return 1
			}
			m.GuestPID = pid
		}
		fmt.Printf("VM \"%s\" has been successfully started.\n", rest[0])
		return 0

	case "controlvm":
		m := find(st, rest[0])
		if m == nil {
			return 1
		}
		if m.State != "running" {
			vboxError("VBOX_E_INVALID_VM_STATE", "Machine '%s' is not currently running", rest[0])
			return 1
		}
		switch rest[1] {
		case "poweroff", "acpipowerbutton":
			if m.GuestPID > 0 {
				syscall.Kill(m.GuestPID, syscall.SIGKILL)
				m.GuestPID = 0
			}
			m.State = "poweroff"
			if rest[1] == "poweroff" {
				fmt.Println("0%...10%...100%")
			}
			return 0
		}
		vboxError("", "Invalid parameter '%s'", rest[1])
		return 2

	case "showvminfo":
		if n, ok := fault("not-ready"); ok {
			limit, _ := strconv.Atoi(n)
			if st.Counters["not-ready"] < limit {
				st.Counters["not-ready"]++
				vboxError("E_ACCESSDENIED", "The object is not ready")
				return 1
			}
		}
		m := find(st, rest[0])
		if m == nil {
			return 1
		}
		fmt.Printf("name=\"%s\"\nUUID=\"%s\"\nmemory=%d\ncpus=%d\nVMState=\"%s\"\n", rest[0], m.UUID, m.MemoryMiB, m.CPUs, m.State)
		if m.NATRule != "" {
			fmt.Printf("Forwarding(0)=\"%s\"\n", m.NATRule)
		}
		return 0

	case "unregistervm":
		o, ok := opts(rest[1:], map[string]int{"--delete": 0})
		if !ok {
			return 2
		}
		m := find(st, rest[0])
		if m == nil {
			return 1
		}
		if m.State == "running" {
			vboxError("VBOX_E_INVALID_OBJECT_STATE", "Cannot unregister the machine '%s' while it is running", rest[0])
			return 1
		}
		if len(m.Clones) > 0 && o["--delete"] != nil {
			vboxError("VBOX_E_OBJECT_IN_USE", "Medium '%s/%s-disk001.vmdk' cannot be closed because it has %d child media", m.Folder, rest[0], len(m.Clones))
			return 1
		}
		if p := st.Machines[m.Parent]; p != nil {
			p.Clones = slices.DeleteFunc(p.Clones, func(c string) bool { return c == rest[0] })
		}
		if o["--delete"] != nil {
			os.RemoveAll(m.Folder)
		}
		delete(st.Machines, rest[0])
		if o["--delete"] != nil {
			fmt.Println("0%...10%...100%")
		}
		return 0

	case "sharedfolder":
		if len(rest) < 2 || rest[0] != "add" {
			vboxError("", "Invalid parameter '%s'", strings.Join(rest, " "))
			return 2
		}
		o, ok := opts(rest[2:], map[string]int{"--name": 1, "--hostpath": 1, "--readonly": 0, "--automount": 0})
		if !ok {
			return 2
		}
		m := find(st, rest[1])
		if m == nil || !notRunning(m, rest[1]) {
			return 1
		}
		if fi, err := os.Stat(first(o["--hostpath"])); err != nil || !fi.IsDir() {
			vboxError("", "Cannot open host directory '%s' (VERR_FILE_NOT_FOUND)", first(o["--hostpath"]))
			return 1
		}
		share := first(o["--name"]) + "=" + first(o["--hostpath"])
		if o["--readonly"] != nil {
			share += ":ro"
		}
		m.Shares = append(m.Shares, share)
		return 0

	case "closemedium":
		if len(rest) < 2 || rest[0] != "dvd" {
			vboxError("", "Invalid parameter")
			return 2
		}
		for n, m := range st.Machines {
			if m.DVD == rest[1] && m.Registered {
				vboxError("VBOX_E_OBJECT_IN_USE", "Medium '%s' cannot be closed because it is still attached to virtual machine '%s'", rest[1], n)
				return 1
			}
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "Syntax error: Invalid command '%s'\n", cmd)
	return 2
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// isOVA checks the file is a tar whose first member is the OVF, as the
// OVF standard requires of an OVA.
func isOVA(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	h, err := tar.NewReader(f).Next()
	return err == nil && strings.HasSuffix(h.Name, ".ovf")
}

// startGuest runs this binary as the fake guest, detached like a VM.
func startGuest(name string, m *machine) (int, error) {
	if m.DVD == "" || m.NATRule == "" {
		return 0, fmt.Errorf("no seed DVD or no NAT rule on %s", name)
	}
	parts := strings.Split(m.NATRule, ",")
	self, _ := os.Executable()
	cmd := exec.Command(self, "__guest", parts[3], m.DVD, name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if m.Serial != "" {
		if f, err := os.OpenFile(m.Serial, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err == nil {
			cmd.Stdout, cmd.Stderr = f, f
		}
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	go cmd.Wait()
	return cmd.Process.Pid, nil
}
