package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/prebuild"
	"github.com/agentfleet/agentfleet/internal/session"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// ProjectFile is the optional per-project settings file.
const ProjectFile = "fleet.hcl"

// Project is fleet.hcl: settings a project keeps beside its code, so
// everyone who spawns agents on it gets the same workspace rules.
//
//	provider        = "virtualbox"             # qemu (default) | virtualbox | slurm
//	slurm {                                  # provider "slurm": each machine is one job
//	  partition  = "agents"
//	  time_limit = "4:00:00"
//	  node_dir   = "/var/tmp/agentfleet"       # node-local machines and images
//	}
//	sync            = "rsync"                  # git | rsync | shared | none
//	exclude         = ["node_modules", "*.log"] # rsync: on top of .gitignore
//	shared_writable = false                    # shared: let the VM write the host folder
//	setup = ["npm ci", "pip install -r requirements.txt"] # or one string; runs in /workspace before the agent, or once in a prebuild
//	prebuild_inputs = ["package-lock.json", "*/go.sum"] # what a prebuild is keyed by (default: the lockfiles found)
//	agent = "aider"                           # profile spawn --task and run use (default claude)
//	profile "aider" {
//	  command = ["aider", "--yes", "--message-file", "{task_file}"]
//	  task    = "file"                        # stdin (default) | file
//	}
//	egress {
//	  mode    = "allowlist"                   # open | allowlist (default) | none
//	  presets = ["claude", "pypi"]            # default ["claude"]
//	  allow   = ["deb.debian.org"]
//	  hosts   = { "mirror.corp" = "203.0.113.10" } # names without DNS
//	  max_connections = 256                   # per machine, both proxies
//	  idle_timeout    = "10m"                 # an idle tunnel is cut
//	}
//	preset "pypi" { allow = ["pypi.org", "files.pythonhosted.org"] }
//	budget {                                # per machine, counted by the credential proxy
//	  usd    = 5
//	  tokens = 2000000
//	}
//	price "claude-sonnet-4" {               # USD per million tokens
//	  input  = 3
//	  output = 15
//	}
//	notify = "curl -s -d @- https://ntfy.sh/my-agents" # gets each event as JSON on stdin
//	idle_suspend = "15m"                    # suspend a machine whose agent waited or was done this long
//	credentials {
//	  mode     = "proxy"                      # proxy (default) | env | none
//	  command  = "pass show anthropic"        # prints the key; run at each start
//	  upstream = "https://api.anthropic.com"
//	}
type Project struct {
	Sync           string   `hcl:"sync,optional"`
	Exclude        []string `hcl:"exclude,optional"`
	SharedWritable bool     `hcl:"shared_writable,optional"`
	// Setup is fleet.hcl's setup, one string or a list of strings, read
	// by LoadProject (gohcl cannot decode either form into one field);
	// SetupCommands returns it.
	Setup []string
	// PrebuildInputs are the files a prebuild is keyed by (see package
	// internal/prebuild); nil means the lockfiles found, [] means none.
	PrebuildInputs []string          `hcl:"prebuild_inputs,optional"`
	Agent          string            `hcl:"agent,optional"`
	Provider       string            `hcl:"provider,optional"` // qemu (default) | virtualbox | slurm
	Profiles       []ProfileBlock    `hcl:"profile,block"`
	Egress         *EgressBlock      `hcl:"egress,block"`
	Presets        []PresetBlock     `hcl:"preset,block"`
	Credentials    *CredentialsBlock `hcl:"credentials,block"`
	Budget         *BudgetBlock      `hcl:"budget,block"`
	Prices         []PriceBlock      `hcl:"price,block"`
	// Notify is a host command that gets each agent event as JSON on
	// stdin (fleet top, fleet wait --notify).
	Notify string `hcl:"notify,optional"`
	// IdleSuspend parks a machine whose agent has waited for input or
	// been done this long ("15m"; "0" or "off": never, the default).
	IdleSuspend string `hcl:"idle_suspend,optional"`
	// Slurm is how machines become jobs with provider = "slurm".
	Slurm *SlurmBlock `hcl:"slurm,block"`
}

// SlurmBlock is `slurm { ... }`: the sbatch options of each machine's job,
// and where fleet lives on the nodes.
type SlurmBlock struct {
	Partition  string   `hcl:"partition,optional"`
	Account    string   `hcl:"account,optional"`
	QOS        string   `hcl:"qos,optional"`
	TimeLimit  string   `hcl:"time_limit,optional"` // Slurm's --time: "90", "4:00:00", "1-0"
	Constraint string   `hcl:"constraint,optional"`
	ExtraArgs  []string `hcl:"extra_args,optional"` // more sbatch options, "--opt=value"
	// MemoryOverheadMiB is added to each job's memory for the hypervisor.
	MemoryOverheadMiB int `hcl:"memory_overhead_mib,optional"`
	// NodeDir is the node-local folder for machines and images (%n: the
	// node's name); FleetBinary the fleet binary's path on the nodes.
	NodeDir     string `hcl:"node_dir,optional"`
	FleetBinary string `hcl:"fleet_binary,optional"`
	// ImageRegistry is the repository `fleet image push` sent the images
	// to (host[:port]/repository): a node without the image on a shared
	// path pulls its files from there by digest. Plain HTTP is spoken to
	// loopback, or with ImageRegistryPlainHTTP.
	ImageRegistry          string `hcl:"image_registry,optional"`
	ImageRegistryPlainHTTP bool   `hcl:"image_registry_plain_http,optional"`
}

// IdleSuspendFor is how long an agent may idle before its machine is
// parked: flag (--idle-suspend) if given, else fleet.hcl's idle_suspend,
// else never (0).
func (p Project) IdleSuspendFor(flag string) (time.Duration, error) {
	if flag != "" {
		d, err := ParseIdleSuspend(flag)
		if err != nil {
			return 0, fmt.Errorf("--idle-suspend: %w", err)
		}
		return d, nil
	}
	if p.IdleSuspend == "" {
		return 0, nil
	}
	d, err := ParseIdleSuspend(p.IdleSuspend)
	if err != nil {
		return 0, fmt.Errorf("idle_suspend: %w", err)
	}
	return d, nil
}

// BudgetBlock is `budget { usd = N, tokens = N }`: each machine's cap.
type BudgetBlock struct {
	USD    float64 `hcl:"usd,optional"`
	Tokens int64   `hcl:"tokens,optional"`
}

// PriceBlock is `price "MODEL" { ... }`: US dollars per million tokens
// for models whose name starts with MODEL ("*": every other model).
type PriceBlock struct {
	Model      string  `hcl:"model,label"`
	Input      float64 `hcl:"input"`
	Output     float64 `hcl:"output"`
	CacheWrite float64 `hcl:"cache_write,optional"`
	CacheRead  float64 `hcl:"cache_read,optional"`
	WebSearch  float64 `hcl:"web_search,optional"` // dollars per 1,000 searches
}

// EgressBlock is `egress { ... }`.
type EgressBlock struct {
	Mode    string            `hcl:"mode,optional"`
	Presets []string          `hcl:"presets,optional"`
	Allow   []string          `hcl:"allow,optional"`
	Hosts   map[string]string `hcl:"hosts,optional"`
	// MaxConnections caps a machine's concurrent proxy connections.
	MaxConnections int    `hcl:"max_connections,optional"`
	IdleTimeout    string `hcl:"idle_timeout,optional"`
}

// PresetBlock is `preset "NAME" { allow = [...] }`: a named allowlist.
type PresetBlock struct {
	Name  string   `hcl:"name,label"`
	Allow []string `hcl:"allow"`
}

// CredentialsBlock is `credentials { ... }`.
type CredentialsBlock struct {
	Mode     string `hcl:"mode,optional"`
	Command  string `hcl:"command,optional"`
	Upstream string `hcl:"upstream,optional"`
}

// NetworkOverrides are the command line's egress and credential flags,
// which win over fleet.hcl.
type NetworkOverrides struct {
	Egress      string
	Presets     []string
	Allow       []string
	Credentials string
	// CredentialCommand and Upstream: "" means fleet.hcl's.
	CredentialCommand string
	Upstream          string
	// Budget: zero fields are fleet.hcl's.
	Budget egress.Budget
}

// Network builds the spawn's network request from fleet.hcl and the flags:
// allowlist with the claude preset and the credential proxy unless told
// otherwise. Every mode, preset and pattern is checked here, before
// anything is made.
func (p Project) Network(o NetworkOverrides) (NetworkRequest, error) {
	var eb EgressBlock
	if p.Egress != nil {
		eb = *p.Egress
	}
	mode := firstOf(o.Egress, eb.Mode, string(egress.ModeAllowlist))
	m, err := egress.ParseMode(mode)
	if err != nil {
		return NetworkRequest{}, err
	}
	presets := eb.Presets
	if o.Presets != nil {
		presets = o.Presets
	}
	if presets == nil {
		presets = []string{"claude"}
	}
	user := map[string][]string{}
	for _, b := range p.Presets {
		user[b.Name] = b.Allow
	}
	pol, err := egress.Build(m, presets, user, append(append([]string{}, eb.Allow...), o.Allow...))
	if err != nil {
		return NetworkRequest{}, err
	}
	if m == egress.ModeAllowlist {
		pol.Hosts = eb.Hosts
	}
	if len(o.Allow) > 0 && m != egress.ModeAllowlist {
		return NetworkRequest{}, fmt.Errorf("--allow needs --egress allowlist (egress is %s)", m)
	}
	if err := pol.Validate(); err != nil {
		return NetworkRequest{}, err
	}
	var cb CredentialsBlock
	if p.Credentials != nil {
		cb = *p.Credentials
	}
	cm, err := ParseCredentialsMode(firstOf(o.Credentials, cb.Mode, string(CredentialsProxy)))
	if err != nil {
		return NetworkRequest{}, err
	}
	if cm == CredentialsEnv && m == egress.ModeAllowlist {
		// The agent then calls the API itself, not through the proxy.
		if pol, err = pol.WithAllowed("api.anthropic.com"); err != nil {
			return NetworkRequest{}, err
		}
	}
	limits, err := eb.limits()
	if err != nil {
		return NetworkRequest{}, err
	}
	spend, err := p.spend(o.Budget)
	if err != nil {
		return NetworkRequest{}, err
	}
	if !spend.Budget.IsZero() && cm != CredentialsProxy {
		return NetworkRequest{}, fmt.Errorf("a budget needs --credentials proxy: only the credential proxy sees what an agent spends (credentials are %s)", cm)
	}
	r := NetworkRequest{Egress: pol, Credentials: cm, Limits: limits, Spend: spend,
		CredentialCommand: firstOf(o.CredentialCommand, cb.Command),
		Upstream:          firstOf(o.Upstream, cb.Upstream)}
	return r, checkUpstream(r.Upstream)
}

// spend is the machines' budget (flags over fleet.hcl) and price table
// (the README's, with fleet.hcl's rows over it).
func (p Project) spend(flags egress.Budget) (egress.SpendConfig, error) {
	var b egress.Budget
	if p.Budget != nil {
		b = egress.Budget{USD: p.Budget.USD, Tokens: p.Budget.Tokens}
	}
	if flags.USD != 0 {
		b.USD = flags.USD
	}
	if flags.Tokens != 0 {
		b.Tokens = flags.Tokens
	}
	if err := b.Validate(); err != nil {
		return egress.SpendConfig{}, err
	}
	var over []egress.Price
	for _, pb := range p.Prices {
		over = append(over, egress.Price{Model: pb.Model, Input: pb.Input, Output: pb.Output, CacheWrite: pb.CacheWrite, CacheRead: pb.CacheRead, WebSearch: pb.WebSearch})
	}
	if err := egress.ValidatePrices(over); err != nil {
		return egress.SpendConfig{}, err
	}
	return egress.SpendConfig{Budget: b, Prices: egress.MergePrices(egress.DefaultPrices, over)}, nil
}

func (eb EgressBlock) limits() (ProxyLimits, error) {
	l := ProxyLimits{MaxConnections: eb.MaxConnections}
	if l.MaxConnections < 0 || l.MaxConnections > 65536 {
		return l, fmt.Errorf("egress max_connections must be between 1 and 65536, got %d", l.MaxConnections)
	}
	if eb.IdleTimeout != "" {
		d, err := time.ParseDuration(eb.IdleTimeout)
		if err != nil || d < time.Second {
			return l, fmt.Errorf("egress idle_timeout %q is not a duration of at least 1s (examples: 90s, 10m)", eb.IdleTimeout)
		}
		l.IdleTimeoutSec = int(d.Seconds())
	}
	return l, nil
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// ProfileBlock is a `profile "NAME" { ... }` block: another agent CLI.
type ProfileBlock struct {
	Name    string   `hcl:"name,label"`
	Command []string `hcl:"command"`
	Task    string   `hcl:"task,optional"`
	// Continue: the arguments that continue the last conversation (fleet
	// fork --task).
	Continue []string `hcl:"continue,optional"`
}

// Profile returns the named agent profile ("" means the project's agent
// setting, else claude). claude and claude-interactive are built in.
func (p Project) Profile(name string) (session.Profile, error) {
	if name == "" {
		name = p.Agent
	}
	for _, b := range p.Profiles {
		if b.Name == name {
			task := session.TaskVia(b.Task)
			if task == "" {
				task = session.TaskStdin
			}
			prof := session.Profile{Name: b.Name, Command: b.Command, Task: task, Continue: b.Continue}
			return prof, prof.Validate()
		}
	}
	switch name {
	case "", session.Claude.Name:
		return session.Claude, nil
	case session.ClaudeInteractive.Name:
		return session.ClaudeInteractive, nil
	}
	names := []string{session.Claude.Name, session.ClaudeInteractive.Name}
	for _, b := range p.Profiles {
		names = append(names, b.Name)
	}
	return session.Profile{}, fmt.Errorf("unknown agent profile %q (profiles: %s)", name, strings.Join(names, ", "))
}

// SetupCommands are the project's setup commands, in order: each runs
// with sh -c in /workspace, and the first that fails stops the rest.
func (p Project) SetupCommands() []string { return slices.Clone(p.Setup) }

// setupCommands reads `setup = "cmd"` or `setup = ["cmd", ...]`. An empty
// string is no setup; an empty command in a list is a mistake.
func setupCommands(a *hcl.Attribute) ([]string, error) {
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		return nil, fmt.Errorf("%w", diags)
	}
	where := a.Range.String()
	if v.IsNull() {
		return nil, nil
	}
	if !v.IsWhollyKnown() {
		return nil, fmt.Errorf("%s: setup must be a string or a list of strings", where)
	}
	if v.Type() == cty.String {
		if s := v.AsString(); s != "" {
			return []string{s}, nil
		}
		return nil, nil
	}
	if !v.Type().IsTupleType() && !v.Type().IsListType() {
		return nil, fmt.Errorf("%s: setup must be a string or a list of strings, not %s", where, v.Type().FriendlyName())
	}
	var out []string
	for i, e := range v.AsValueSlice() {
		if e.IsNull() || e.Type() != cty.String {
			return nil, fmt.Errorf("%s: setup[%d] must be a string", where, i)
		}
		if strings.TrimSpace(e.AsString()) == "" {
			return nil, fmt.Errorf("%s: setup[%d] is empty", where, i)
		}
		out = append(out, e.AsString())
	}
	return out, nil
}

// FindProject reads the fleet.hcl that applies to dir, by the one rule
// every setting follows: the nearest fleet.hcl from dir up to top, the
// project's top-level folder (a repository's top, or dir itself outside
// one). None is an empty Project.
func FindProject(dir, top string) (Project, error) {
	for d := filepath.Clean(dir); ; {
		if _, err := os.Stat(filepath.Join(d, ProjectFile)); err == nil {
			return LoadProject(d)
		}
		parent := filepath.Dir(d)
		if d == filepath.Clean(top) || parent == d || !strings.HasPrefix(d, filepath.Clean(top)) {
			return Project{}, nil
		}
		d = parent
	}
}

// LoadProject reads dir/fleet.hcl; a missing file is an empty Project.
// Errors name the file and line.
func LoadProject(dir string) (Project, error) {
	var p Project
	path := filepath.Join(dir, ProjectFile)
	src, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return p, fmt.Errorf("%w", diags)
	}
	// setup is taken out first: the rest decodes as before, and an
	// attribute no field names is still an error.
	content, rest, diags := f.Body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "setup"}}})
	if diags.HasErrors() {
		return p, fmt.Errorf("%w", diags)
	}
	if diags := gohcl.DecodeBody(rest, nil, &p); diags.HasErrors() {
		return p, fmt.Errorf("%w", diags)
	}
	if a := content.Attributes["setup"]; a != nil {
		if p.Setup, err = setupCommands(a); err != nil {
			return p, err
		}
	}
	for i, in := range p.PrebuildInputs {
		if err := prebuild.CheckPattern(in); err != nil {
			return p, fmt.Errorf("%s: prebuild_inputs[%d]: %w", path, i, err)
		}
	}
	for _, b := range p.Profiles {
		if _, err := p.Profile(b.Name); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	}
	if p.Sync != "" {
		if _, err := ParseSyncMode(p.Sync); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	}
	if _, err := p.Network(NetworkOverrides{}); err != nil {
		return p, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := p.IdleSuspendFor(""); err != nil {
		return p, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
