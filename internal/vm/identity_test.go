package vm

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The identity script is the whole of a clone's identity: everything it
// writes comes from the host, quoted so that no value can run as a command.
func TestIdentityScriptWritesOnlyWhatTheHostGives(t *testing.T) {
	for _, restored := range []bool{true, false} {
		t.Run(map[bool]string{true: "restored clone", false: "at boot"}[restored], func(t *testing.T) { testIdentityScript(t, restored) })
	}
}

func testIdentityScript(t *testing.T, restored bool) {
	seed := Seed{Hostname: "proj-2", User: "agent", AuthorizedKey: "ssh-ed25519 AAAAkey agentfleet-proj",
		HostKeyPrivate: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n", HostKeyPublic: "ssh-ed25519 AAAAhost",
		Files: []File{{Path: "/etc/environment", Content: "ANTHROPIC_AUTH_TOKEN=fleet-tok'$(touch /tmp/pwned)\n", Append: true},
			{Path: "/etc/fleet/proxy.env", Content: "x=1\n", Mode: "0644"}}}
	var r *Restored
	if restored {
		r = &Restored{MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte("entropy")}
	}
	s := seed.IdentityScript(r)
	if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Fatalf("the script does not parse: %v %s\n%s", err, out, s)
	}
	// Only a restored clone reseeds, takes a new machine-id and makes
	// running services reread; at boot none of them runs yet.
	for _, only := range []string{"0x5207", "> /etc/machine-id", "systemctl reload ssh", "restart --no-block docker"} {
		if strings.Contains(s, only) != restored {
			t.Errorf("restored=%v, but the script's %q is the other way", restored, only)
		}
	}
	for _, want := range []string{
		"hostname proj-2",
		"ssh-ed25519 AAAAhost",
		"-----BEGIN OPENSSH PRIVATE KEY-----",
		"ssh-ed25519 AAAAkey agentfleet-proj",
		">> /etc/environment",
		"> /etc/fleet/proxy.env",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("identity script lacks %q", want)
		}
	}
	// Run it against a temp folder, system commands stubbed: the hostile
	// token text arrives byte for byte and runs nothing, and every file
	// lands where it should.
	dir := t.TempDir()
	pwned := dir + "/pwned"
	os.MkdirAll(dir+"/etc/ssh", 0o755)
	os.MkdirAll(dir+"/home/agent/.ssh", 0o755)
	os.WriteFile(dir+"/etc/hosts", []byte("127.0.0.1 localhost\n127.0.1.1 fleet-template\n"), 0o644)
	stubs := "perl() { :; }; hostname() { :; }; systemctl() { :; }; install() { :; }; chown() { :; }\n"
	script := stubs + strings.NewReplacer("/etc/", dir+"/etc/", "/home/", dir+"/home/", "/dev/kmsg", dir+"/kmsg", "/tmp/pwned", pwned).Replace(s)
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("%v %s\n%s", err, out, script)
	}
	got, _ := os.ReadFile(dir + "/etc/environment")
	if string(got) != strings.ReplaceAll(seed.Files[0].Content, "/tmp/pwned", pwned) {
		t.Errorf("environment file = %q", got)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Error("a value ran as a command")
	}
	files := map[string]string{
		"/etc/hostname":                     "proj-2\n",
		"/etc/hosts":                        "127.0.0.1 localhost\n127.0.1.1 proj-2\n",
		"/etc/ssh/ssh_host_ed25519_key":     seed.HostKeyPrivate,
		"/etc/ssh/ssh_host_ed25519_key.pub": seed.HostKeyPublic + "\n",
		"/home/agent/.ssh/authorized_keys":  seed.AuthorizedKey + "\n",
		"/etc/fleet/proxy.env":              "x=1\n",
	}
	if restored {
		files["/etc/machine-id"] = "0123456789abcdef0123456789abcdef\n"
	}
	for path, want := range files {
		if b, _ := os.ReadFile(dir + path); string(b) != want {
			t.Errorf("%s = %q, want %q", path, b, want)
		}
	}
}
