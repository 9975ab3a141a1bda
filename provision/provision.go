// Package provision holds what goes into an image: numbered shell scripts,
// embedded in the binary, run in order as root in the image, in a chroot or
// over SSH in a booted guest. Recipes name which scripts run.
package provision

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
)

//go:embed scripts/*.sh
var files embed.FS

// Script is one provisioning script.
type Script struct {
	Name string // e.g. "10-boot.sh"
	Body []byte
}

// Recipe is an ordered set of scripts and the checks that prove them.
type Recipe struct {
	Name    string
	Scripts []Script
	Checks  []Check
}

// Check is one verification command run as the agent user in a booted
// clone of the new image.
type Check struct {
	What    string // shown to the user, e.g. "docker info"
	Command string // shell command; exit 0 passes
}

// base is the light recipe: a bootable, generalized image with the agent
// user, and none of the toolchain (nor the guest agent warm clones need). Tests of the SSH path use it, since
// installing packages inside an emulated guest takes far too long.
var base = []string{"10-boot.sh", "15-ca-certs.sh", "60-agent.sh", "80-versions.sh", fastBootScript, "90-generalize.sh"}

// fastBootScript trims the boot: the seed applied without cloud-init,
// Docker started on first use. The untrimmed recipe is full without it.
const fastBootScript = "85-fast-boot.sh"

// RecipeNames lists the recipes a build can use.
var RecipeNames = []string{"full", "untrimmed", "base"}

var baseChecks = []Check{
	{"agent user with passwordless sudo", "sudo -n true"},
	{"/workspace owned by agent", `test "$(stat -c %U /workspace)" = "$(id -un)"`},
	{"versions recorded", "test -s /etc/agentfleet/versions.json"},
}

var fullChecks = []Check{
	{"docker info", "docker info --format '{{.ServerVersion}}'"},
	{"docker build (FROM scratch)", "d=$(mktemp -d) && printf 'FROM scratch\\nCOPY f /f\\n' > $d/Dockerfile && echo ok > $d/f && " +
		"DOCKER_BUILDKIT=0 docker build -q -t fleet-verify $d >/dev/null && docker image rm fleet-verify >/dev/null && rm -rf $d"},
	{"node --version", "node --version"},
	{"claude --version", "claude --version"},
	{"Claude first-run state", `jq -e '.hasCompletedOnboarding and .bypassPermissionsModeAccepted and .projects["/workspace"].hasTrustDialogAccepted' ~/.claude.json >/dev/null`},
	{"Claude status hooks", `jq -e '[.hooks.Notification, .hooks.Stop, .hooks.PostToolUse, .hooks.UserPromptSubmit] | all(.[0].hooks[0].command | contains(".fleet/hook"))' ~/.claude/settings.json >/dev/null`},
	{"bubblewrap sandbox", "bwrap --ro-bind / / --unshare-all true"},
	{"QEMU guest agent (warm clones' identity channel)", "systemctl is-active --quiet qemu-guest-agent"},
}

// Get returns a named recipe.
func Get(name string) (Recipe, error) {
	all := scripts()
	switch name {
	case "full", "":
		return Recipe{Name: "full", Scripts: all, Checks: append(append([]Check{}, baseChecks...), fullChecks...)}, nil
	case "untrimmed":
		// full as it booted before the boot was trimmed (cloud-init, Docker
		// at boot): what the cold-boot bench measures against.
		r, _ := Get("full")
		r.Name, r.Scripts = "untrimmed", slices.DeleteFunc(r.Scripts, func(s Script) bool { return s.Name == fastBootScript })
		return r, nil
	case "base":
		var out []Script
		for _, s := range all {
			for _, b := range base {
				if s.Name == b {
					out = append(out, s)
				}
			}
		}
		return Recipe{Name: "base", Scripts: out, Checks: baseChecks}, nil
	}
	return Recipe{}, fmt.Errorf("unknown recipe %q (recipes: %s)", name, strings.Join(RecipeNames, ", "))
}

// DirectBoot says whether images of this recipe start their kernel
// directly: the trimmed boot does; the untrimmed one boots as it did.
func (r Recipe) DirectBoot() bool { return r.has(fastBootScript) }

// has says whether the recipe runs the named script.
func (r Recipe) has(name string) bool {
	return slices.ContainsFunc(r.Scripts, func(s Script) bool { return s.Name == name })
}

// guestAgentScript installs the channel a warm clone's identity comes over.
const guestAgentScript = "65-guest-agent.sh"

// CanWarm says whether images of the named recipe can have warm
// templates: their clones need the guest agent to be given an identity.
func CanWarm(recipe string) bool {
	r, err := Get(recipe)
	return err == nil && r.has(guestAgentScript)
}

// userScriptsBefore is the first recipe script the user's own scripts run
// ahead of: they see the whole toolchain and the agent user, and
// versions.json and generalize still come after them.
const userScriptsBefore = "80-"

// WithUserScripts returns the recipe with extra scripts (a team's own
// packages or settings) run as root after the toolchain and before
// generalize. Their bodies count in Hash, so changing one is a new image.
// Each is named "user-N-<name>" in the build output and in the image.
func (r Recipe) WithUserScripts(extra []Script) Recipe {
	if len(extra) == 0 {
		return r
	}
	at := len(r.Scripts)
	for i, s := range r.Scripts {
		if s.Name >= userScriptsBefore {
			at = i
			break
		}
	}
	out := append([]Script{}, r.Scripts[:at]...)
	for i, s := range extra {
		out = append(out, Script{Name: fmt.Sprintf("user-%d-%s", i+1, s.Name), Body: s.Body})
	}
	r.Scripts = append(out, r.Scripts[at:]...)
	return r
}

func scripts() []Script {
	entries, _ := fs.ReadDir(files, "scripts")
	out := make([]Script, 0, len(entries))
	for _, e := range entries {
		b, _ := files.ReadFile("scripts/" + e.Name())
		out = append(out, Script{Name: e.Name(), Body: b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Hash digests the recipe's scripts and checks, for the recipe hash.
func (r Recipe) Hash() string {
	h := sha256.New()
	for _, s := range r.Scripts {
		h.Write([]byte(s.Name))
		h.Write([]byte{0})
		h.Write(s.Body)
		h.Write([]byte{0})
	}
	for _, c := range r.Checks {
		h.Write([]byte(c.Command))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
