//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Warm clones of one template share nothing unique: randomness, host key
// (each pinned), machine-id and hostname are their own; a file written in
// one is absent from the other; the template's files do not change. A
// template whose key no longer matches is not used.
func TestWarmClones(t *testing.T) {
	requireE2E(t)
	parallelVM(t)
	t.Cleanup(func() { dumpConsoles(t) })
	run := func(timeout time.Duration, args ...string) result {
		return fleetIn(t, "wc", timeout, nil, args...)
	}
	t.Cleanup(func() { run(5*time.Minute, "destroy", "--all", "--force") })

	// TestMain's image build made the default shape's template.
	r := fleet(t, bootDeadline, "image", "warm", "debian-12")
	if r.code != 0 {
		t.Fatalf("image warm: %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "already has a warm template for 2 CPUs and 2048 MiB") {
		t.Errorf("image build did not warm the default shape: %s", r.stderr)
	}
	tplDir := strings.TrimSpace(r.stdout)
	sums := func() string { return templateSums(t, tplDir) }
	before := sums()

	t0 := time.Now()
	r = run(bootDeadline, "spawn", "2", "--sync", "none")
	if r.code != 0 {
		t.Fatalf("warm spawn: %s", r.stderr)
	}
	fmt.Printf("e2e: warm spawn of 2 to SSH-ready: %s\n", time.Since(t0).Round(100*time.Millisecond))
	if strings.Count(r.stderr, "restored from the warm template") != 2 || strings.Contains(r.stderr, "making a warm template") {
		t.Errorf("the clones were not both restored from the existing template:\n%s", r.stderr)
	}
	facts := map[string]map[string]string{}
	for _, vm := range []string{"wc-1", "wc-2"} {
		out := run(time.Minute, "exec", vm, "--", "sh", "-c",
			"echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo hostname=$(hostname); echo machineid=$(cat /etc/machine-id); "+
				"echo hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); echo bootid=$(cat /proc/sys/kernel/random/boot_id); "+
				"echo reseed=$(sudo dmesg | grep -ci 'crng reseeded'); echo kernelreseed=$(sudo dmesg | grep -ci 'virtual machine fork'); echo clock=$(date +%s)").stdout
		hostNow := time.Now().Unix()
		facts[vm] = map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				facts[vm][k] = v
			}
		}
		t.Logf("%s: %v", vm, facts[vm])
		if facts[vm]["hostname"] != vm {
			t.Errorf("%s calls itself %q", vm, facts[vm]["hostname"])
		}
		if facts[vm]["reseed"] == "0" || facts[vm]["reseed"] == "" {
			t.Errorf("%s: the kernel log shows no reseed", vm)
		}
		// The template's clock stood still since it was made, minutes ago;
		// the identity program set the clone's to the host's.
		if c, err := strconv.ParseInt(facts[vm]["clock"], 10, 64); err != nil || c < hostNow-15 || c > hostNow+2 {
			t.Errorf("%s: guest clock %q, host %d", vm, facts[vm]["clock"], hostNow)
		}
	}
	for _, k := range []string{"rand", "machineid", "hostkey"} {
		if facts["wc-1"][k] == "" || facts["wc-1"][k] == facts["wc-2"][k] {
			t.Errorf("the clones share %s: %q", k, facts["wc-1"][k])
		}
	}
	// Each clone's host key is the one made for it on the host (pinned:
	// exec above already refused any other).
	b, _ := os.ReadFile(filepath.Join(fleetHome, "fleets", "wc", "state.json"))
	var st struct {
		Machines []struct {
			Name    string `json:"name"`
			HostKey string `json:"host_key"`
		} `json:"machines"`
	}
	json.Unmarshal(b, &st)
	for _, m := range st.Machines {
		if f := strings.Fields(m.HostKey); len(f) < 2 || f[1] != facts[m.Name]["hostkey"] {
			t.Errorf("%s serves host key %s, not the one pinned for it", m.Name, facts[m.Name]["hostkey"])
		}
	}

	run(time.Minute, "exec", "wc-1", "--", "sh", "-c", "echo mine > /var/tmp/only-in-1 && sync")
	if r := run(time.Minute, "exec", "wc-2", "--", "test", "-e", "/var/tmp/only-in-1"); r.code == 0 {
		t.Error("a file written in wc-1 appears in wc-2")
	}
	if after := sums(); after != before {
		t.Errorf("the template changed:\n%s\n%s", before, after)
	}
	if out, _ := exec.Command("sh", "-c", "qemu-img info -U --backing-chain "+filepath.Join(fleetHome, "fleets", "wc", "machines", "wc-1", "disk.qcow2")+" | grep 'backing file:'").Output(); !strings.Contains(string(out), tplDir) {
		t.Errorf("wc-1's disk is not an overlay on the template disk: %s", out)
	}

	// Each session starts new processes in the guest (sshd, a shell);
	// under emulation their code was translated again at new addresses
	// every time, and QEMU kept it: about 40 MiB of host memory a session.
	t.Run("repeated sessions do not grow the machine's host memory", func(t *testing.T) {
		hypervisor := func() uint64 {
			var rows []struct {
				Name   string `json:"name"`
				Memory struct {
					Hypervisor uint64 `json:"hypervisor_bytes"`
				} `json:"memory"`
			}
			json.Unmarshal([]byte(run(time.Minute, "ls", "--json").stdout), &rows)
			for _, r := range rows {
				if r.Name == "wc-2" {
					return r.Memory.Hypervisor
				}
			}
			t.Fatal("wc-2 is not listed with its memory")
			return 0
		}
		before := hypervisor()
		const sessions = 6
		for i := 0; i < sessions; i++ {
			if r := run(time.Minute, "exec", "wc-2", "--", "sh", "-c", "sudo true && ls /usr/lib >/dev/null"); r.code != 0 {
				t.Fatalf("exec: %s", r.stderr)
			}
		}
		grew := int64(hypervisor()) - int64(before)
		t.Logf("wc-2's hypervisor memory %d MiB, %+d MiB after %d sessions", before>>20, grew>>20, sessions)
		if grew > 30<<20 {
			t.Errorf("%d sessions grew wc-2's hypervisor memory by %d MiB (from %d MiB)", sessions, grew>>20, before>>20)
		}
	})

	// A clone's QEMU holds the boot ROM its template was started with, not
	// the kernel (14 MiB of QEMU's heap per clone). A reboot from inside
	// then finds no kernel behind the ROM: the disk's GRUB boots it.
	t.Run("a clone that reboots itself comes back, booted by the disk's GRUB, with its files and host key", func(t *testing.T) {
		pid := ls(t, "wc")["wc-1"].PID
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(string(b), "\x00")
		if slices.Contains(args, "-kernel") || !slices.Contains(args, "-option-rom") {
			t.Errorf("wc-1's QEMU was given the kernel, or not the boot ROM: %q", args)
		}
		run(time.Minute, "exec", "wc-1", "--", "sudo", "systemctl", "reboot") // its connection may end first
		deadline := time.Now().Add(bootDeadline)
		var r result
		for time.Now().Before(deadline) {
			// exec dials with wc-1's pinned host key: a new key fails it.
			if r = run(time.Minute, "exec", "wc-1", "--", "sh", "-c", "cat /var/tmp/only-in-1; cat /proc/sys/kernel/random/boot_id; grep -o BOOT_IMAGE= /proc/cmdline; hostname; cat /etc/machine-id"); r.code == 0 {
				break
			}
			time.Sleep(3 * time.Second)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 5 || lines[0] != "mine" || lines[2] != "BOOT_IMAGE=" || lines[3] != "wc-1" || lines[4] != facts["wc-1"]["machineid"] {
			t.Fatalf("wc-1 after its reboot (exit %d): %q %s", r.code, r.stdout, r.stderr)
		}
		if lines[1] == facts["wc-1"]["bootid"] {
			t.Errorf("wc-1 did not reboot: its boot id is still %s", lines[1])
		}
		if after := sums(); after != before {
			t.Errorf("the template changed:\n%s\n%s", before, after)
		}
	})

	t.Run("--no-warm restores from a template that exists", func(t *testing.T) {
		r := run(bootDeadline, "spawn", "1", "--no-warm", "--sync", "none")
		if r.code != 0 || !strings.Contains(r.stderr, "restored from the warm template") {
			t.Errorf("--no-warm with a template: %d %s", r.code, r.stderr)
		}
	})

	// One cold boot proves three things: a template whose key no longer
	// matches is not used, --no-warm then boots cold saying why and makes
	// no template, and the cold boot goes through the image's own boot.
	t.Run("a template whose key no longer matches is not used; --no-warm boots cold and makes none", func(t *testing.T) {
		// As after a QEMU upgrade: the binary's size and time are part of
		// the key. Another qemu-system-x86_64 first on PATH (a wrapper: a
		// copy would not find QEMU's accelerator modules), so the suite's
		// other spawns keep theirs.
		bin, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte("#!/bin/sh\nexec "+bin+" \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		wrapper, err := os.Stat(filepath.Join(dir, "qemu-system-x86_64"))
		if err != nil {
			t.Fatal(err)
		}
		other := []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
		// The default shape: its template exists, made by the other QEMU.
		r := fleetIn(t, "wc", bootDeadline, other, "spawn", "1", "--no-warm", "--sync", "none")
		if r.code != 0 {
			t.Fatalf("spawn: %s", r.stderr)
		}
		if strings.Contains(r.stderr, "restored from the warm template") {
			t.Errorf("a template of another QEMU build was used:\n%s", r.stderr)
		}
		if !strings.Contains(r.stderr, "cold boot instead of a warm restore: no warm template of debian-12@") || !strings.Contains(r.stderr, "--no-warm makes none") ||
			strings.Contains(r.stderr, "making a warm template") {
			t.Errorf("no reason for the cold boot, or a template made:\n%s", r.stderr)
		}
		// Other tests make templates of their own shapes meanwhile: only one
		// whose key names the wrapper (its size and time) is this spawn's.
		if made := templatesNaming(t, filepath.Dir(tplDir), fmt.Sprintf("size=%d mtime=%d", wrapper.Size(), wrapper.ModTime().Unix())); len(made) > 0 {
			t.Errorf("--no-warm made a template: %v", made)
		}
		vm := strings.TrimSpace(r.stdout)
		out := run(time.Minute, "exec", vm, "--", "sh", "-c", "hostname; systemctl is-active fleet-seed; test -e /etc/cloud/cloud-init.disabled && echo cloud-init-off; grep -q BOOT_IMAGE= /proc/cmdline || echo direct-boot; cat /etc/resolv.conf").stdout
		if out != vm+"\nactive\ncloud-init-off\ndirect-boot\nnameserver 10.0.2.3\n" {
			t.Errorf("the cold-booted clone %s (the image's kernel started directly, the seed applied without cloud-init): %q", vm, out)
		}
	})
	// --sync shared boots cold and says why: TestWorkspaceShared checks
	// it on its own shared machine (a cold boot of its own here cost a
	// minute and a half of the suite).
}

// templatesNaming lists the templates in warmDir whose key contains s.
func templatesNaming(t *testing.T, warmDir, s string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(warmDir, "*", "template.json"))
	if err != nil {
		t.Fatal(err)
	}
	var named []string
	for _, f := range files {
		var tpl struct {
			Key string `json:"key"`
		}
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &tpl) == nil && strings.Contains(tpl.Key, s) {
			named = append(named, filepath.Dir(f))
		}
	}
	return named
}

// templateSums is the SHA-256 of each file of a template's folder (a warm
// template's, a prebuild's): a clone must never change them.
func templateSums(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []string{"disk.qcow2", "memory", "state", "template.json"} {
		h := sha256.New()
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(h, fh)
		fh.Close()
		b.WriteString(f + "=" + hex.EncodeToString(h.Sum(nil)) + " ")
	}
	return b.String()
}
