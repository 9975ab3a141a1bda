package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

const claudePackage = "@anthropic-ai/claude-code"

// StepResolveVersions pins what this build will install, before anything
// is built, so that the recipe hash names the image exactly: the mirror's
// package index (its InRelease digest) and the Claude Code version that a
// tag such as "latest" points at now.
//
// Reads "config", "mirror" or "source_digest". Writes "source_digest",
// "claude_version", "node" (a NodeRelease, zero for system), "recipe_hash".
// No cleanup.
type StepResolveVersions struct {
	Client *http.Client // nil: a client with a 60 s timeout
}

func (s *StepResolveVersions) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	mirror, _ := state.Get("mirror").(string)
	if cfg.Source == SourceMirror {
		release := strings.TrimRight(mirror, "/") + "/dists/" + cfg.Suite + "/InRelease"
		body, err := httpGet(ctx, client, release)
		if err != nil {
			return halt(state, fmt.Errorf("package mirror unreachable: %w", err))
		}
		sum := sha256.Sum256(body)
		state.Put("source_digest", "sha256:"+hex.EncodeToString(sum[:]))
	}
	claude := ""
	if cfg.installsClaude() {
		v, err := ResolveNpmVersion(ctx, client, cfg.NpmRegistry, claudePackage, cfg.ClaudeVersion)
		if err != nil {
			return halt(state, err)
		}
		claude = v
		cfg.say("Claude Code %s", v)
	}
	state.Put("claude_version", claude)
	node := NodeRelease{}
	if cfg.installsNode() && cfg.NodeVersion != NodeSystem {
		var err error
		if node, err = ResolveNode(ctx, client, cfg.NpmRegistry, string(cfg.Arch.Or()), cfg.NodeVersion, time.Now()); err != nil {
			return halt(state, err)
		}
		cfg.say("Node.js %s, npm %s", node.Version, node.NpmVersion)
	}
	state.Put("node", node)
	nodeKey := ""
	if node.Version != "" {
		nodeKey = node.Version + " npm " + node.NpmVersion
	}
	state.Put("recipe_hash", cfg.RecipeHash(mirror, state.Get("source_digest").(string), claude, nodeKey))
	return multistep.ActionContinue
}

func (s *StepResolveVersions) Cleanup(multistep.StateBag) {}

// installsNode says the recipe installs Node.js (its script reads the
// tarball the build resolved).
func (c *Config) installsNode() bool {
	for _, sc := range c.Recipe.Scripts {
		if strings.Contains(string(sc.Body), "FLEET_NODE_TARBALL") {
			return true
		}
	}
	return false
}

func (c *Config) installsClaude() bool {
	for _, sc := range c.Recipe.Scripts {
		if strings.Contains(string(sc.Body), claudePackage) {
			return true
		}
	}
	return false
}

// ResolveNpmVersion asks the registry which version a version or dist-tag
// (default "latest") of pkg names.
func ResolveNpmVersion(ctx context.Context, client *http.Client, registry, pkg, want string) (string, error) {
	if registry == "" {
		registry = "https://registry.npmjs.org/"
	}
	if want == "" {
		want = "latest"
	}
	u := strings.TrimRight(registry, "/") + "/" + url.PathEscape(pkg) + "/" + url.PathEscape(want)
	body, err := httpGet(ctx, client, u)
	if err != nil {
		return "", fmt.Errorf("resolve %s@%s on the npm registry: %w", pkg, want, err)
	}
	var meta struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(body, &meta); err != nil || meta.Version == "" {
		return "", fmt.Errorf("resolve %s@%s: the registry's answer has no version", pkg, want)
	}
	return meta.Version, nil
}

func httpGet(ctx context.Context, client *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}
