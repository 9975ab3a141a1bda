package provision

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestRecipesOrderAndSubset(t *testing.T) {
	full, err := Get("full")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(full.Scripts); i++ {
		if full.Scripts[i-1].Name >= full.Scripts[i].Name {
			t.Fatalf("scripts out of order: %s before %s", full.Scripts[i-1].Name, full.Scripts[i].Name)
		}
	}
	if full.Scripts[len(full.Scripts)-1].Name != "90-generalize.sh" {
		t.Fatal("generalize must run last")
	}
	b, _ := Get("base")
	var names []string
	for _, s := range b.Scripts {
		names = append(names, s.Name)
	}
	if strings.Join(names, " ") != "10-boot.sh 15-ca-certs.sh 60-agent.sh 80-versions.sh 85-fast-boot.sh 90-generalize.sh" {
		t.Fatalf("base recipe = %v", names)
	}
	if full.Hash() == b.Hash() {
		t.Fatal("recipes must hash differently")
	}
	// untrimmed is full, booting as it did before the fast-boot script.
	u, _ := Get("untrimmed")
	if u.Name != "untrimmed" || len(u.Scripts) != len(full.Scripts)-1 || u.Hash() == full.Hash() || !CanWarm("untrimmed") {
		t.Fatalf("untrimmed recipe: %d scripts against full's %d", len(u.Scripts), len(full.Scripts))
	}
	for _, s := range u.Scripts {
		if s.Name == "85-fast-boot.sh" {
			t.Fatal("the untrimmed recipe trims the boot")
		}
	}
	if full2, _ := Get("full"); len(full2.Scripts) != len(full.Scripts) {
		t.Fatal("getting untrimmed changed full")
	}
	if _, err := Get("kitchen-sink"); err == nil || !strings.Contains(err.Error(), "full, untrimmed, base") {
		t.Fatalf("unknown recipe: %v", err)
	}
}

func TestUserScriptsRunAfterTheToolchainAndBeforeGeneralize(t *testing.T) {
	full, _ := Get("full")
	r := full.WithUserScripts([]Script{{"corp.sh", []byte("apt-get install -y corp-tools\n")}, {"b.sh", []byte("true\n")}})
	var names []string
	for _, s := range r.Scripts {
		names = append(names, s.Name)
	}
	got := strings.Join(names, " ")
	if !strings.Contains(got, "75-apparmor-bwrap.sh user-1-corp.sh user-2-b.sh 80-versions.sh 85-fast-boot.sh 90-generalize.sh") {
		t.Fatalf("order: %s", got)
	}
	if len(full.Scripts) != len(r.Scripts)-2 {
		t.Fatal("WithUserScripts changed the recipe it was called on")
	}
	if r.Hash() == full.Hash() {
		t.Fatal("a user script must change the recipe hash")
	}
	r2 := full.WithUserScripts([]Script{{"corp.sh", []byte("apt-get install -y corp-tools2\n")}, {"b.sh", []byte("true\n")}})
	if r2.Hash() == r.Hash() {
		t.Fatal("a changed script body must change the recipe hash")
	}
	if full.WithUserScripts(nil).Hash() != full.Hash() {
		t.Fatal("no user scripts must leave the recipe as it is")
	}
}

// Every script is valid POSIX sh and stops on the first error.
func TestScriptsParseAndSetErrexit(t *testing.T) {
	full, _ := Get("full")
	dir := t.TempDir()
	for _, s := range full.Scripts {
		if !strings.Contains(string(s.Body), "set -eu") {
			t.Errorf("%s does not set -eu", s.Name)
		}
		p := filepath.Join(dir, s.Name)
		os.WriteFile(p, s.Body, 0o755)
		if out, err := exec.Command("sh", "-n", p).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s.Name, err, out)
		}
	}
}

// The seeded Claude state is valid JSON with what an unattended session
// needs, whatever the version string looks like.
func TestClaudeStateScriptWritesTheFirstRunAnswers(t *testing.T) {
	full, _ := Get("full")
	var body string
	for _, s := range full.Scripts {
		if s.Name == "70-claude-state.sh" {
			body = string(s.Body)
		}
	}
	for _, want := range []string{`"hasCompletedOnboarding": true`, `"bypassPermissionsModeAccepted": true`, `"/workspace": {`, `"hasTrustDialogAccepted": true`} {
		if !strings.Contains(body, want) {
			t.Errorf("70-claude-state.sh lacks %s", want)
		}
	}
}

// Only images with the guest agent can be warmed: a clone of one without
// could never be given its own identity.
func TestCanWarmOnlyRecipesWithTheGuestAgent(t *testing.T) {
	if !CanWarm("full") || !CanWarm("") {
		t.Error("the full recipe cannot be warmed")
	}
	if CanWarm("base") || CanWarm("nonesuch") {
		t.Error("a recipe without the guest agent can be warmed")
	}
}
