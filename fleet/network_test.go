package fleet

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/vm"
)

func TestProjectNetworkDefaultsAndOverrides(t *testing.T) {
	r, err := Project{}.Network(NetworkOverrides{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Egress.Mode != egress.ModeAllowlist || r.Credentials != CredentialsProxy || !reflect.DeepEqual(r.Egress.Allow, egress.Presets["claude"]) {
		t.Errorf("defaults: %+v", r)
	}
	p := Project{
		Egress:      &EgressBlock{Presets: []string{"pypi"}, Allow: []string{"deb.debian.org"}, Hosts: map[string]string{"mirror.corp": "203.0.113.10"}},
		Presets:     []PresetBlock{{Name: "pypi", Allow: []string{"pypi.org"}}},
		Credentials: &CredentialsBlock{Mode: "env"},
	}
	r, err = p.Network(NetworkOverrides{Allow: []string{"*.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"pypi.org:443", "deb.debian.org:443", "*.example.com:443", "api.anthropic.com:443"}; !reflect.DeepEqual(r.Egress.Allow, want) || r.Credentials != CredentialsEnv || r.Egress.Hosts["mirror.corp"] == "" {
		t.Errorf("fleet.hcl + --allow: %+v", r)
	}
	r, err = p.Network(NetworkOverrides{Egress: "open", Credentials: "proxy"})
	if err != nil || r.Egress.Mode != egress.ModeOpen || len(r.Egress.Allow) != 0 || r.Credentials != CredentialsProxy {
		t.Errorf("flags win: %+v %v", r, err)
	}
}

func TestProjectNetworkRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		p    Project
		o    NetworkOverrides
		want string
	}{
		{Project{}, NetworkOverrides{Egress: "closed"}, `unknown egress mode "closed"`},
		{Project{}, NetworkOverrides{Presets: []string{"pypy"}}, `unknown egress preset "pypy"`},
		{Project{}, NetworkOverrides{Allow: []string{"*"}}, `invalid domain pattern "*"`},
		{Project{}, NetworkOverrides{Allow: []string{"evil.com."}}, "ends with a dot"},
		{Project{}, NetworkOverrides{Egress: "open", Allow: []string{"x.com"}}, "--allow needs --egress allowlist"},
		{Project{}, NetworkOverrides{Credentials: "file"}, `unknown credentials mode "file"`},
		{Project{}, NetworkOverrides{Upstream: "ftp://x"}, "not an http(s) URL"},
		{Project{Egress: &EgressBlock{Hosts: map[string]string{"m.corp": "not-an-ip"}}}, NetworkOverrides{}, "not an IP address"},
	} {
		if _, err := c.p.Network(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.o, err, c.want)
		}
	}
}

func TestLoadProjectChecksEgressBlocks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte("egress {\n  presets = [\"nope\"]\n}\n"), 0o644)
	if _, err := LoadProject(dir); err == nil || !strings.Contains(err.Error(), "fleet.hcl") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("error %v should name the file and the preset", err)
	}
}

func TestGuestNetworkFiles(t *testing.T) {
	files := guestNetworkFiles("10.0.2.100", &Network{Egress: egress.ModeAllowlist, Credentials: CredentialsProxy}, "fleet-tok")
	byPath := map[string]vm.File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	env := byPath["/etc/environment"]
	for _, want := range []string{"https_proxy=http://10.0.2.100:3128\n", "HTTPS_PROXY=http://10.0.2.100:3128\n", "NO_PROXY=localhost,127.0.0.1,::1,10.0.2.100\n",
		"ANTHROPIC_BASE_URL=http://10.0.2.100:8119\n", "ANTHROPIC_AUTH_TOKEN=fleet-tok\n"} {
		if !strings.Contains(env.Content, want) {
			t.Errorf("/etc/environment lacks %q", want)
		}
	}
	if !env.Append {
		t.Error("/etc/environment must be appended to, not replaced")
	}
	if !strings.Contains(byPath["/etc/fleet/proxy.env"].Content, "HTTPS_PROXY=http://10.0.2.100:3128") ||
		!strings.Contains(byPath["/etc/apt/apt.conf.d/90fleet-proxy"].Content, `Acquire::https::Proxy "http://10.0.2.100:3128";`) ||
		byPath["/etc/sudoers.d/90-fleet-proxy"].Mode != "0440" {
		t.Errorf("docker, apt or sudo config missing: %+v", files)
	}
	open := guestNetworkFiles("10.0.2.100", &Network{Egress: egress.ModeOpen, Credentials: CredentialsEnv}, "t")
	if len(open) != 0 {
		t.Errorf("open egress with env credentials configures nothing, got %+v", open)
	}
}

// fakeDriver is just enough driver for validation.
type fakeDriver struct{ vm.Driver }

func (fakeDriver) Name() string                  { return "fake" }
func (fakeDriver) Capabilities() vm.Capabilities { return vm.Capabilities{} }

func TestDriversThatCannotRestrictRefuseEgressControl(t *testing.T) {
	for _, r := range []NetworkRequest{
		{Egress: egress.Policy{Mode: egress.ModeAllowlist}, Credentials: CredentialsEnv},
		{Egress: egress.Policy{Mode: egress.ModeNone}, Credentials: CredentialsEnv},
		{Egress: egress.Policy{Mode: egress.ModeOpen}, Credentials: CredentialsProxy},
	} {
		if _, _, err := r.normalize(fakeDriver{}); err == nil || !strings.Contains(err.Error(), "fake driver") {
			t.Errorf("%+v on a driver without forwards: %v", r, err)
		}
	}
	if _, rec, err := (NetworkRequest{Egress: egress.Policy{Mode: egress.ModeOpen}, Credentials: CredentialsEnv}).normalize(fakeDriver{}); err != nil || rec == nil {
		t.Errorf("open + env must work anywhere: %v", err)
	}
}

func TestChangePolicyIsAllOrNothing(t *testing.T) {
	c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "p"}
	var ms []*Machine
	for i, mode := range []egress.Mode{egress.ModeAllowlist, egress.ModeAllowlist, egress.ModeOpen, egress.ModeNone} {
		m := &Machine{Name: "p-" + string(rune('1'+i)), Dir: filepath.Join(t.TempDir(), "m"), Network: &Network{Egress: mode}}
		if mode != egress.ModeOpen {
			os.MkdirAll(m.Dir, 0o700)
			pol, _ := egress.Build(mode, []string{"claude"}, nil, nil)
			egress.SavePolicy(m.Dir, pol)
		}
		ms = append(ms, m)
	}
	if err := c.Store().Update(context.Background(), func(s *State) error { s.Machines = ms; return nil }); err != nil {
		t.Fatal(err)
	}
	allow := func(p egress.Policy) (egress.Policy, error) { return p.WithAllowed("pypi.org") }
	ctx := context.Background()
	if _, err := c.Net().ChangePolicy(ctx, nil, true, allow); err == nil || !strings.Contains(err.Error(), "p-3 has open egress") {
		t.Fatalf("--all over an open machine: %v", err)
	}
	if p, _ := egress.LoadPolicy(ms[0].Dir); len(p.Allow) != len(egress.Presets["claude"]) {
		t.Error("a refused change still changed p-1")
	}
	if _, err := c.Net().ChangePolicy(ctx, []string{"p-4"}, false, allow); err == nil || !strings.Contains(err.Error(), "--egress none") {
		t.Errorf("none: %v", err)
	}
	if _, err := c.Net().ChangePolicy(ctx, []string{"p-9"}, false, allow); err == nil {
		t.Error("an unknown machine was accepted")
	}
	if _, err := c.Net().ChangePolicy(ctx, []string{"p-1", "p-2"}, false, allow); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:2] {
		if p, _ := egress.LoadPolicy(m.Dir); p.Allow[len(p.Allow)-1] != "pypi.org:443" {
			t.Errorf("%s: %v", m.Name, p.Allow)
		}
	}
}

func TestParseCredentialEnv(t *testing.T) {
	if c := ParseCredentialEnv("ANTHROPIC_API_KEY:sk:with:colons"); c.Kind != egress.APIKey || c.Value != "sk:with:colons" {
		t.Errorf("%+v", c)
	}
	for _, bad := range []string{"", "ANTHROPIC_API_KEY:", "PATH:/bin", "nocolon"} {
		if c := ParseCredentialEnv(bad); c.Value != "" {
			t.Errorf("%q gave %+v", bad, c)
		}
	}
}

func TestHostCredentialFromACommand(t *testing.T) {
	ctx := context.Background()
	c := &Controller{}
	cred, err := c.Net().hostCredential(ctx, "printf 'sk-ant-oat01-abc\\n'")
	if err != nil || cred.Kind != egress.OAuthToken || cred.Value != "sk-ant-oat01-abc" {
		t.Errorf("%+v %v", cred, err)
	}
	c = &Controller{}
	_, err = c.Net().hostCredential(ctx, "echo sk-secret-in-output; exit 3")
	if err == nil || strings.Contains(err.Error(), "sk-secret") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("a failing command: %v (must not show its output)", err)
	}
	c = &Controller{Getenv: func(k string) string { return map[string]string{"ANTHROPIC_API_KEY": "k"}[k] }}
	if cred, _ := c.Net().hostCredential(ctx, ""); cred.Kind != egress.APIKey || cred.Value != "k" {
		t.Errorf("from the environment: %+v", cred)
	}
}
