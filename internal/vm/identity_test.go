package vm

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The identity program is the whole of a clone's identity: everything it
// writes comes from the host, and no value, however hostile, is read as
// code. It runs here for real (perl) against a folder standing in for /.
func TestIdentityProgramWritesOnlyWhatTheHostGives(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl here")
	}
	for _, restored := range []bool{false, true} {
		t.Run(map[bool]string{true: "restored clone", false: "at boot"}[restored], func(t *testing.T) { testIdentityProgram(t, restored) })
	}
}

func testIdentityProgram(t *testing.T, restored bool) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if restored && me.Uid != "0" {
		t.Skip("RNDRESEEDCRNG needs root")
	}
	hostile := "fleet-tok'$(touch /tmp/pwned)\"; system('touch /tmp/pwned'); `touch /tmp/pwned`\n__DATA__\nroot 2f\n"
	seed := Seed{InstanceID: "i-2", Hostname: "proj-2", User: me.Username, AuthorizedKey: "ssh-ed25519 AAAAkey agentfleet-proj",
		HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n", HostKeyPublic: "ssh-ed25519 AAAAhost",
		Files: []File{{Path: "/etc/environment", Content: "ANTHROPIC_AUTH_TOKEN=" + hostile, Append: true},
			{Path: "/etc/fleet/proxy.env", Content: "x=1\n", Mode: "0644"}}}
	dir := t.TempDir()
	for _, d := range []string{"etc/ssh", "proc/sys/kernel", "dev", "run"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(dir+"/etc/hosts", []byte("127.0.0.1 localhost\n127.0.1.1 fleet-template\n"), 0o644)
	os.WriteFile(dir+"/etc/environment", []byte("PATH=/usr/bin\n"), 0o644)
	os.WriteFile(dir+"/etc/ssh/ssh_host_rsa_key", []byte("old"), 0o600)
	var r *Restored
	var sshd *exec.Cmd
	if restored {
		// The real device (the reseed ioctl needs it) and a stand-in sshd
		// that SIGHUP ends.
		os.Symlink("/dev/urandom", dir+"/dev/urandom")
		sshd = exec.Command("sleep", "60")
		if err := sshd.Start(); err != nil {
			t.Fatal(err)
		}
		defer sshd.Process.Kill()
		os.WriteFile(dir+"/run/sshd.pid", []byte(strconv.Itoa(sshd.Process.Pid)+"\n"), 0o644)
		r = &Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("entropy"), Arch: HostArch()}
	}
	prog := seed.identityProgram(r, dir)
	if !strings.HasPrefix(prog, identityPerl) {
		t.Fatal("the program text is not the fixed one")
	}
	for _, l := range strings.Split(strings.TrimSpace(strings.TrimPrefix(prog, identityPerl+"__DATA__\n")), "\n") {
		for _, f := range strings.Fields(l)[1:] {
			if _, err := hex.DecodeString(f); err != nil {
				t.Fatalf("a value is not hex-encoded: %q", l)
			}
		}
	}
	cmd := exec.Command("perl", "-")
	cmd.Stdin = strings.NewReader(prog)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		os.Remove("/tmp/pwned")
		t.Fatal("a value ran as a command")
	}
	home := dir + "/home/" + me.Username
	files := map[string]string{
		"/etc/hostname":                     "proj-2\n",
		"/proc/sys/kernel/hostname":         "proj-2",
		"/etc/hosts":                        "127.0.0.1 localhost\n127.0.1.1 proj-2\n",
		"/etc/ssh/ssh_host_ed25519_key":     seed.HostKeyPrivate,
		"/etc/ssh/ssh_host_ed25519_key.pub": seed.HostKeyPublic + "\n",
		"/etc/environment":                  "PATH=/usr/bin\nANTHROPIC_AUTH_TOKEN=" + hostile,
		"/etc/fleet/proxy.env":              "x=1\n",
		SeededInstanceFile:                  "i-2\n",
	}
	if restored {
		files["/etc/machine-id"] = "0123456789abcdef0123456789abcdef\n"
	}
	for path, want := range files {
		if b, _ := os.ReadFile(dir + path); string(b) != want {
			t.Errorf("%s = %q, want %q", path, b, want)
		}
	}
	if b, _ := os.ReadFile(home + "/.ssh/authorized_keys"); string(b) != seed.AuthorizedKey+"\n" {
		t.Errorf("authorized_keys = %q", b)
	}
	for path, mode := range map[string]os.FileMode{"/etc/ssh/ssh_host_ed25519_key": 0o600, "/etc/fleet/proxy.env": 0o644} {
		if fi, err := os.Stat(dir + path); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	for path, mode := range map[string]os.FileMode{home + "/.ssh": 0o700, home + "/.ssh/authorized_keys": 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode || strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)) != me.Uid {
			t.Errorf("%s: mode %v, want %v, owned by the user", path, fi.Mode().Perm(), mode)
		}
	}
	if _, err := os.Stat(dir + "/etc/ssh/ssh_host_rsa_key"); err == nil {
		t.Error("another host key survived: the clone would serve a key nobody pinned")
	}
	if restored {
		// OpenSSH before 9.8: each connection's sshd reads the new key; the
		// listener is not re-executed.
		if err := sshd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("sshd (before OpenSSH 9.8) was signalled: %v", err)
		}
	} else if _, err := os.Stat(dir + "/etc/machine-id"); err == nil {
		t.Error("at boot the program wrote a machine-id (systemd makes it)")
	}
}

// A restored clone's clock is set first, from the host's time, to the
// nanosecond; without a time it is left alone.
func TestIdentityProgramSetsTheClockFirst(t *testing.T) {
	now := time.Unix(1764547200, 123456789)
	prog := Seed{User: "agent"}.IdentityProgram(&Restored{Now: now})
	if !strings.Contains(prog, "time "+hex.EncodeToString([]byte("1764547200.123456789"))+"\n") {
		t.Errorf("the host's time is not in the program's data:\n%s", prog[len(identityPerl):])
	}
	if i, j := strings.Index(identityPerl, "set_clock($v{time})"), strings.Index(identityPerl, "RNDRESEEDCRNG"); i < 0 || j < i {
		t.Error("the clock is not set before anything else")
	}
	if strings.Contains(Seed{User: "agent"}.IdentityProgram(&Restored{}), "\ntime ") {
		t.Error("a zero time was set")
	}
}

// The shell form feeds the program to perl unchanged.
func TestIdentityScriptFeedsTheProgramToPerl(t *testing.T) {
	s := Seed{User: "agent", Hostname: "h"}
	script := s.IdentityScript(nil)
	if !strings.Contains(script, "\n"+s.IdentityProgram(nil)+"FLEET_IDENTITY_END\n") || !strings.HasPrefix(script, "exec perl - <<'FLEET_IDENTITY_END'\n") {
		t.Errorf("script: %q", script)
	}
	if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("does not parse: %v %s", err, out)
	}
}

// A hypervisor killed at any moment leaves a machine that boots: the
// identity's files are on disk (sync) before the instance marker that
// says they are, and no file is ever seen empty or half-written (each
// is renamed into place). A stand-in sync records what the disk would
// hold at each flush.
func TestIdentityIsOnDiskBeforeTheMarkerSaysSo(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl here")
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir, bin := t.TempDir(), t.TempDir()
	for _, d := range []string{"etc/ssh", "proc/sys/kernel", "dev", "run"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(dir+"/etc/ssh/ssh_host_ed25519_key", []byte("the template's key"), 0o600)
	log := filepath.Join(bin, "flushes")
	// Each flush appends: the key's content, then the marker's (or "-").
	stub := "#!/bin/sh\n{ cat " + dir + "/etc/ssh/ssh_host_ed25519_key; cat " + dir + SeededInstanceFile + " 2>/dev/null || echo -; } >> " + log + "\n"
	os.WriteFile(filepath.Join(bin, "sync"), []byte(stub), 0o755)
	seed := Seed{InstanceID: "i-7", Hostname: "proj-7", User: me.Username, AuthorizedKey: "ssh-ed25519 AAAAkey",
		HostKeyPrivate: "NEW KEY", HostKeyPublic: "ssh-ed25519 AAAAhost"}
	cmd := exec.Command("perl", "-")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	cmd.Stdin = strings.NewReader(seed.identityProgram(nil, dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b, _ := os.ReadFile(log)
	if got, want := string(b), "NEW KEY\n-\nNEW KEY\ni-7\n"; got != want {
		t.Fatalf("at each flush the disk held %q, want %q: the key first, then the marker", got, want)
	}
	leftovers, _ := filepath.Glob(dir + "/etc/ssh/*.fleet-new")
	if len(leftovers) > 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}

// A fork's child forgets its source's network lines (only those keys,
// exactly) before its own are appended, and leaves Docker running.
func TestIdentityProgramForAForkReplacesTheSourcesNetworkLines(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl here")
	}
	me, err := user.Current()
	if err != nil || me.Uid != "0" {
		t.Skip("RNDRESEEDCRNG needs root")
	}
	dir := restoredRoot(t)
	env := "PATH=/usr/bin\nANTHROPIC_AUTH_TOKEN=source-token\nhttp_proxy=http://10.0.2.100:3128\nANTHROPIC_AUTH_TOKENX=keep\n#ANTHROPIC_AUTH_TOKEN=comment\n ANTHROPIC_AUTH_TOKEN=indented\nexport http_proxy=x\n"
	os.WriteFile(dir+"/etc/environment", []byte(env), 0o644)
	sshd := exec.Command("sleep", "60")
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	defer sshd.Process.Kill()
	os.WriteFile(dir+"/run/sshd.pid", []byte(strconv.Itoa(sshd.Process.Pid)+"\n"), 0o644)
	// A docker.pid: restarting Docker would run systemctl, which fails here.
	os.WriteFile(dir+"/run/docker.pid", []byte("1\n"), 0o644)
	seed := Seed{Hostname: "proj-3", User: me.Username, AuthorizedKey: "ssh-ed25519 AAAAkey", HostKeyPrivate: "k\n", HostKeyPublic: "ssh-ed25519 AAAAhost",
		Files: []File{{Path: "/etc/environment", Content: "ANTHROPIC_AUTH_TOKEN=child-token\n", Append: true}}}
	r := &Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("e"), Fork: true, ForgetEnv: []string{"ANTHROPIC_AUTH_TOKEN", "http_proxy"}}
	cmd := exec.Command("perl", "-")
	cmd.Stdin = strings.NewReader(seed.identityProgram(r, dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	want := "PATH=/usr/bin\nANTHROPIC_AUTH_TOKENX=keep\n#ANTHROPIC_AUTH_TOKEN=comment\nANTHROPIC_AUTH_TOKEN=child-token\n"
	if b, _ := os.ReadFile(dir + "/etc/environment"); string(b) != want {
		t.Errorf("/etc/environment = %q, want %q", b, want)
	}
}

// A restored clone's program syncs and sets the clock by the guest
// architecture's own system calls (no exec of sync or date); at boot,
// where nothing says the architecture, it runs the commands.
func TestIdentityProgramUsesTheGuestsSystemCalls(t *testing.T) {
	for arch, want := range map[Arch][2]string{AMD64: {"162", "227"}, ARM64: {"81", "112"}, "": {"162", "227"}} {
		prog := Seed{User: "agent"}.IdentityProgram(&Restored{Arch: arch})
		for i, k := range []string{"sys_sync", "sys_clock_settime"} {
			if !strings.Contains(prog, "\n"+k+" "+hex.EncodeToString([]byte(want[i]))+"\n") {
				t.Errorf("%q: no %s %s in the program's data", arch, k, want[i])
			}
		}
	}
	if strings.Contains(Seed{User: "agent"}.IdentityProgram(nil), "\nsys_sync ") {
		t.Error("the boot program was given system call numbers")
	}
}

// From OpenSSH 9.8 the listener holds the host keys for its sshd-session
// children: a restored clone's program sends it SIGHUP to reread them.
func TestIdentityProgramReloadsAnSSHDThatHoldsItsKeys(t *testing.T) {
	me, err := user.Current()
	if err != nil || me.Uid != "0" {
		t.Skip("RNDRESEEDCRNG needs root")
	}
	dir := restoredRoot(t)
	os.MkdirAll(dir+"/usr/lib/openssh", 0o755)
	os.WriteFile(dir+"/usr/lib/openssh/sshd-session", nil, 0o755)
	sshd := exec.Command("sleep", "60")
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	defer sshd.Process.Kill()
	os.WriteFile(dir+"/run/sshd.pid", []byte(strconv.Itoa(sshd.Process.Pid)+"\n"), 0o644)
	seed := Seed{Hostname: "proj-4", User: me.Username, AuthorizedKey: "ssh-ed25519 AAAAkey", HostKeyPrivate: "k\n", HostKeyPublic: "ssh-ed25519 AAAAhost"}
	cmd := exec.Command("perl", "-")
	cmd.Stdin = strings.NewReader(seed.identityProgram(&Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("e")}, dir))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	done := make(chan error, 1)
	go func() { done <- sshd.Wait() }()
	select {
	case <-done: // SIGHUP ends sleep: sshd would have reread its keys
	case <-time.After(5 * time.Second):
		t.Error("an OpenSSH 9.8 listener was not sent SIGHUP: it would serve the template's host key")
	}
	// Without the listener's pid file the program fails rather than leave
	// the old key served.
	os.Remove(dir + "/run/sshd.pid")
	cmd = exec.Command("perl", "-")
	cmd.Stdin = strings.NewReader(seed.identityProgram(&Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("e")}, dir))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "sshd is not running") {
		t.Errorf("no sshd pid file: %v %s", err, out)
	}
}

// The host's time, read before the program ran, is not stepped back to
// when the clock is already at it or up to a minute past it; older or
// newer clocks are set. (clock_settime is swapped for getpid here, which
// returns non-zero: a call to it makes the program fail.)
func TestIdentityProgramDoesNotStepAFresherClockBack(t *testing.T) {
	me, err := user.Current()
	if err != nil || me.Uid != "0" {
		t.Skip("RNDRESEEDCRNG needs root")
	}
	getpid := map[Arch]string{AMD64: "39", ARM64: "172"}[HostArch()]
	if getpid == "" {
		t.Skip("no getpid number for this architecture")
	}
	if !strings.Contains(identityPerl, "$ENV{"+HostTimeEnv+"}") {
		t.Fatalf("the program does not read %s", HostTimeEnv)
	}
	stamp := func(t time.Time) string { return fmt.Sprintf("%s=%d.%09d", HostTimeEnv, t.Unix(), t.Nanosecond()) }
	for _, c := range []struct {
		what string
		host time.Time
		env  string
		set  bool
	}{
		{"host time read 10 s before it ran", time.Now().Add(-10 * time.Second), "", false},
		{"host time the same second", time.Now(), "", false},
		{"a clock an hour ahead", time.Now().Add(-time.Hour), "", true},
		{"a template's clock a day behind", time.Now().Add(24 * time.Hour), "", true},
		// The runner's time at the start wins over the older one.
		{"runner's time now, the program's a day old", time.Now().Add(-24 * time.Hour), stamp(time.Now()), false},
		{"runner's time 10 s behind the clock", time.Now(), stamp(time.Now().Add(-10 * time.Second)), true},
		{"runner's time a day ahead", time.Now(), stamp(time.Now().Add(24 * time.Hour)), true},
		{"a runner's time that is not one", time.Now().Add(-10 * time.Second), HostTimeEnv + "=1;system('id')", false},
	} {
		dir := restoredRoot(t)
		seed := Seed{Hostname: "proj-5", User: me.Username, AuthorizedKey: "ssh-ed25519 AAAAkey", HostKeyPrivate: "k\n", HostKeyPublic: "ssh-ed25519 AAAAhost"}
		prog := seed.identityProgram(&Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("e"), Now: c.host, Arch: HostArch()}, dir)
		n := guestSyscalls[HostArch()][1]
		old := "\nsys_clock_settime " + hex.EncodeToString([]byte(strconv.Itoa(n))) + "\n"
		if !strings.Contains(prog, old) {
			t.Fatal("no clock_settime number in the program's data")
		}
		prog = strings.Replace(prog, old, "\nsys_clock_settime "+hex.EncodeToString([]byte(getpid))+"\n", 1)
		cmd := exec.Command("perl", "-")
		cmd.Stdin = strings.NewReader(prog)
		if c.env != "" {
			cmd.Env = append(os.Environ(), c.env)
		}
		out, err := cmd.CombinedOutput()
		if set := strings.Contains(string(out), "set the clock"); set != c.set {
			t.Errorf("%s: clock set %v, want %v (%v %s)", c.what, set, c.set, err, out)
		}
	}
}

// restoredRoot is a folder standing in for a restored clone's root: the
// folders the identity program writes in, and the real urandom (the
// reseed ioctl needs it).
func restoredRoot(t *testing.T) string {
	dir := t.TempDir()
	for _, d := range []string{"etc/ssh", "proc/sys/kernel", "dev", "run"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.Symlink("/dev/urandom", dir+"/dev/urandom")
	return dir
}
