package architecture

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/agentfleet/agentfleet"

// The drivers: only the CLI's root.go, where it builds them, and their own
// tests and e2e may name them.
var drivers = []string{"internal/vm/qemu", "internal/vm/virtualbox", "internal/vm/slurm"}

// pkg is one package of the module as its non-test files import it.
type pkg struct {
	dir     string              // relative to the module root, "/" separated
	imports map[string][]string // module-relative import → files importing it
	files   map[string]*ast.File
}

// loadModule parses every non-test Go file of the module (build tags are
// ignored on purpose: a rule holds on every platform).
func loadModule(t *testing.T) map[string]*pkg {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]*pkg{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		p := pkgs[rel]
		if p == nil {
			p = &pkg{dir: rel, imports: map[string][]string{}, files: map[string]*ast.File{}}
			pkgs[rel] = p
		}
		p.files[filepath.Base(path)] = f
		for _, imp := range f.Imports {
			ip := strings.Trim(imp.Path.Value, `"`)
			if ip == module {
				ip = "."
			} else if !strings.HasPrefix(ip, module+"/") {
				continue
			} else {
				ip = strings.TrimPrefix(ip, module+"/")
			}
			p.imports[ip] = append(p.imports[ip], filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("found only %d packages under %s: the walk is wrong", len(pkgs), root)
	}
	return pkgs
}

func under(dir, root string) bool { return dir == root || strings.HasPrefix(dir, root+"/") }

func isDriver(dir string) bool {
	for _, d := range drivers {
		if under(dir, d) {
			return true
		}
	}
	return false
}

// rule is one "never" arrow: a package (by its dir) must not import another.
type rule struct {
	name   string
	broken func(from, to, file string) bool
}

var rules = []rule{
	{"the controller never imports a driver", func(from, to, _ string) bool {
		return under(from, "fleet") && isDriver(to)
	}},
	{"internal never imports up (fleet, images, builder, provision, cmd)", func(from, to, _ string) bool {
		return under(from, "internal") && !under(to, "internal")
	}},
	{"the CLI reaches drivers only in root.go", func(from, to, file string) bool {
		return under(from, "cmd/fleet") && isDriver(to) && file != "root.go"
	}},
	{"a driver never imports another driver", func(from, to, _ string) bool {
		return isDriver(from) && isDriver(to) && !sameDriver(from, to)
	}},
	{"images and builder never import the controller", func(from, to, _ string) bool {
		return (under(from, "images") || under(from, "builder")) && under(to, "fleet")
	}},
}

func sameDriver(a, b string) bool {
	for _, d := range drivers {
		if under(a, d) && under(b, d) {
			return true
		}
	}
	return false
}

func TestImportRules(t *testing.T) {
	pkgs := loadModule(t)
	for _, r := range rules {
		for _, p := range pkgs {
			for to, files := range p.imports {
				for _, f := range files {
					if r.broken(p.dir, to, f) {
						t.Errorf("%s: %s/%s imports %s", r.name, p.dir, f, to)
					}
				}
			}
		}
	}
}

// The Packer plugin links no controller code: not fleet, and nothing only
// the controller needs (the proxies, sessions, workspaces).
func TestPluginLinksNoController(t *testing.T) {
	pkgs := loadModule(t)
	deps := closure(pkgs, "cmd/packer-plugin-agentfleet")
	for _, banned := range []string{"fleet", "internal/egress", "internal/session", "internal/workspace"} {
		for _, d := range deps {
			if under(d, banned) {
				t.Errorf("the Packer plugin links %s", d)
			}
		}
	}
}

// closure is every module package from imports, directly or not.
func closure(pkgs map[string]*pkg, from string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(dir string) {
		p := pkgs[dir]
		if p == nil {
			return
		}
		for to := range p.imports {
			if !seen[to] {
				seen[to] = true
				walk(to)
			}
		}
	}
	walk(from)
	var out []string
	for d := range seen {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func TestLoadSeesTheModule(t *testing.T) {
	// Guards the tests above against passing on an empty walk.
	pkgs := loadModule(t)
	for _, want := range []string{"fleet", "cmd/fleet", "internal/vm", "internal/vm/qemu", "cmd/packer-plugin-agentfleet"} {
		if pkgs[want] == nil {
			t.Errorf("package %s not found", want)
		}
	}
	if len(pkgs["cmd/fleet"].imports["fleet"]) == 0 {
		t.Error("cmd/fleet does not seem to import fleet: imports are not being read")
	}
	if _, err := os.Stat("../go.mod"); err != nil {
		t.Errorf("not at the module root's child: %v", err)
	}
}
