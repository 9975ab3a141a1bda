package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// named is one constant of this package, read from its source, so a
// constant added later is checked without anyone listing it here.
type named struct {
	name, value string
	block       int // index of its const ( ... ) block: one block, one folder
	pos         string
}

// constants parses the package's non-test files. Every constant must be a
// plain string literal: a computed name would hide from the literal scan.
func constants(t *testing.T) []named {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []named
	block := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			block++
			for _, sp := range gd.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if i >= len(vs.Values) {
						t.Errorf("%s: constant %s has no value of its own", fset.Position(id.Pos()), id.Name)
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Errorf("%s: constant %s is not a plain string literal", fset.Position(id.Pos()), id.Name)
						continue
					}
					v, _ := strconv.Unquote(lit.Value)
					out = append(out, named{id.Name, v, block, fset.Position(id.Pos()).String()})
				}
			}
		}
	}
	if len(out) < 40 {
		t.Fatalf("found only %d constants: the parse missed the package", len(out))
	}
	return out
}

// Every name is one plain path element: a "/" or ".." would reach out of
// its folder, a leading "-" reads as an option to the tools that get the
// path (qemu-img, VBoxManage, rsync), and the shell-free characters keep
// them safe to splice into ssh and QEMU option strings.
func TestNamesArePlainBaseNames(t *testing.T) {
	for _, c := range constants(t) {
		v := c.value
		switch {
		case v == "" || v == "." || v == "..":
			t.Errorf("%s = %q is not a name", c.name, v)
		case strings.ContainsAny(v, `/\`) || strings.Contains(v, ".."):
			t.Errorf("%s = %q leaves its folder", c.name, v)
		case strings.HasPrefix(v, "-"):
			t.Errorf("%s = %q reads as an option", c.name, v)
		case filepath.Base(v) != v || filepath.Clean(v) != v:
			t.Errorf("%s = %q is not its own base name", c.name, v)
		}
		for _, r := range v {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
				t.Errorf("%s = %q has %q: only lowercase letters, digits and . _ -", c.name, v, r)
				break
			}
		}
	}
}

// Two names of one folder that are equal would be one file with two
// writers. A name that is another's prefix or suffix constant joined to
// it (egress.log and its rotation egress.log.1) is checked too.
func TestNoTwoNamesOfAFolderCollide(t *testing.T) {
	seen := map[int]map[string]string{}
	for _, c := range constants(t) {
		if seen[c.block] == nil {
			seen[c.block] = map[string]string{}
		}
		if other, ok := seen[c.block][c.value]; ok {
			t.Errorf("%s and %s are both %q in one folder (%s)", other, c.name, c.value, c.pos)
		}
		seen[c.block][c.value] = c.name
	}
	// Rotations and suffixed siblings the writers make.
	machine := seen[blockOf(t, "DiskFile")]
	for _, derived := range []string{SerialFile + ".1", AuditFile + ".1"} {
		if name, ok := machine[derived]; ok {
			t.Errorf("%s = %q is also a rotation another writer makes", name, derived)
		}
	}
	if KeyFile+PublicKeySuffix == FleetKnownHosts || KeyFile+PublicKeySuffix == StateFile {
		t.Errorf("the fleet key's public half collides with another fleet file")
	}
}

func blockOf(t *testing.T, name string) int {
	for _, c := range constants(t) {
		if c.name == name {
			return c.block
		}
	}
	t.Fatalf("no constant %s", name)
	return 0
}

// A leaf imports only the standard library, so the Packer plugin and
// every internal package may use it without linking anything.
func TestImportsOnlyTheStandardLibrary(t *testing.T) {
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: layout must stay a leaf", f, p)
			}
		}
	}
}

func TestHome(t *testing.T) {
	t.Setenv("FLEET_HOME", "rel/home")
	h, err := Home()
	if err != nil || !filepath.IsAbs(h) || !strings.HasSuffix(h, filepath.Join("rel", "home")) {
		t.Errorf("relative FLEET_HOME: %q, %v; want it made absolute", h, err)
	}
	t.Setenv("FLEET_HOME", "")
	t.Setenv("XDG_DATA_HOME", "/xdg")
	if h, err := Home(); err != nil || h != "/xdg/agentfleet" {
		t.Errorf("XDG_DATA_HOME: %q, %v", h, err)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/u")
	if h, err := Home(); err != nil || h != "/u/.local/share/agentfleet" {
		t.Errorf("HOME: %q, %v", h, err)
	}
}

// Each path stays inside the folder it belongs to, for any name that
// passes fleet's name check.
func TestPathsNest(t *testing.T) {
	p := Paths{Root: "/h"}
	under := func(what, path, dir string) {
		t.Helper()
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") || strings.Contains(rel, "/") {
			t.Errorf("%s = %s is not directly under %s", what, path, dir)
		}
	}
	for _, f := range []string{"a", "proj", "x-1"} {
		fd := p.FleetDir(f)
		under("FleetDir", fd, p.FleetsDir())
		under("FleetsDir", p.FleetsDir(), p.Root)
		for what, path := range map[string]string{"StateFile": p.StateFile(f), "LockFile": p.LockFile(f), "KeyFile": p.KeyFile(f),
			"KnownHosts": p.KnownHosts(f), "SpawningFile": p.SpawningFile(f), "ResultsDir": p.ResultsDir(f),
			"MachinesDir": p.MachinesDir(f), "RolledBackDir": p.RolledBackDir(f)} {
			under(what, path, fd)
		}
		under("MachineDir", p.MachineDir(f, f+"-2"), p.MachinesDir(f))
	}
	for what, path := range map[string]string{"ImagesDir": p.ImagesDir(), "VirtualBoxDir": p.VirtualBoxDir(), "TmpDir": p.TmpDir(), "CacheDir": p.CacheDir()} {
		under(what, path, p.Root)
	}
	seen := map[string]string{}
	for what, path := range map[string]string{"FleetsDir": p.FleetsDir(), "ImagesDir": p.ImagesDir(), "VirtualBoxDir": p.VirtualBoxDir(), "TmpDir": p.TmpDir(), "CacheDir": p.CacheDir()} {
		if other, ok := seen[path]; ok {
			t.Errorf("%s and %s are both %s", what, other, path)
		}
		seen[path] = what
	}
}
