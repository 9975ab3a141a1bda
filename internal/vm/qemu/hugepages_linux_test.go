package qemu

import (
	"os/exec"
	"strings"
	"testing"
)

// A process started after disableHugePages (as QEMU is) has transparent
// huge pages off, as the kernel reports in its status.
func TestDisableHugePagesReachesTheNextProcess(t *testing.T) {
	if err := disableHugePages(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("grep", "^THP_enabled:", "/proc/self/status").Output()
	if err != nil {
		t.Skipf("this kernel reports no THP_enabled: %v", err)
	}
	if got := strings.Join(strings.Fields(string(out)), " "); got != "THP_enabled: 0" {
		t.Fatalf("child: %q", got)
	}
}

func TestParseHugePages(t *testing.T) {
	for in, want := range map[string]bool{"": false, "on": false, "off": true, " off ": true} {
		if got, err := ParseHugePages(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"0", "no", "OFF", "never"} {
		if _, err := ParseHugePages(bad); err == nil || !strings.Contains(err.Error(), HugePagesEnv) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
