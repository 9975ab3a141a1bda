package builder

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepResolveMirror decides which Debian mirror to build from: the one in
// the config, else the one this host's apt uses (never a hard-coded host).
//
// Reads "config". Writes "mirror". No cleanup.
type StepResolveMirror struct{}

func (s *StepResolveMirror) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	mirror := cfg.Mirror
	if mirror == "" {
		m, err := AptMirror(cfg.AptRoot)
		if err != nil {
			return halt(state, err)
		}
		mirror = m
	}
	cfg.say("using package mirror %s", mirror)
	state.Put("mirror", mirror)
	return multistep.ActionContinue
}

func (s *StepResolveMirror) Cleanup(multistep.StateBag) {}

// AptMirror returns the first Debian archive URI configured under root's
// /etc/apt (deb822 .sources files or one-line .list files), skipping the
// security archive.
func AptMirror(root string) (string, error) {
	if root == "" {
		root = "/"
	}
	aptDir := filepath.Join(root, "etc", "apt")
	files := []string{filepath.Join(aptDir, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*"))
	sort.Strings(more)
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uris []string
		switch {
		case strings.HasSuffix(f, ".sources"):
			uris = deb822URIs(string(b))
		case strings.HasSuffix(f, ".list") || filepath.Base(f) == "sources.list":
			uris = oneLineURIs(string(b))
		}
		for _, u := range uris {
			if strings.Contains(u, "security") || !strings.Contains(u, "://") {
				continue
			}
			return strings.TrimRight(u, "/"), nil
		}
	}
	return "", errors.New("no Debian mirror found in " + aptDir + " (pass --mirror URL)")
}

func deb822URIs(s string) []string {
	var out []string
	for _, stanza := range strings.Split(s, "\n\n") {
		fields := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(stanza))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if fields["enabled"] == "no" || !strings.Contains(" "+fields["types"]+" ", " deb ") {
			continue
		}
		out = append(out, strings.Fields(fields["uris"])...)
	}
	return out
}

func oneLineURIs(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		i := 1
		if strings.HasPrefix(f[1], "[") { // options: [arch=amd64 signed-by=...]
			for i < len(f) && !strings.HasSuffix(f[i], "]") {
				i++
			}
			i++
		}
		if i < len(f) {
			out = append(out, f[i])
		}
	}
	return out
}
