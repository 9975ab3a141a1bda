package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// allowed are the literals equal to a name here that mean something else.
// file (slash path from the module root) -> value -> why.
var allowed = map[string]map[string]string{
	"internal/vm/virtualbox/vboxfake/main.go": {
		StateFile: "the fake VBoxManage's own registry, in its own folder; no fleet folder",
	},
	"builder/step_disk.go": {
		TmpFolder: "the guest's /tmp inside the image being assembled, not FLEET_HOME/tmp",
	},
}

// TestNoFileNameLiteralsOutsideLayout fails when a non-test Go file of the
// module spells one of this package's names as a string literal instead
// of using the constant: the way the folder contract leaked before
// (known_hosts written but never listed, disk.qcow2 spelled five times).
//
// A name with a dot or underscore (serial.log, known_hosts) is found
// anywhere in a literal as a path element or the end of one
// ("%s/serial.log", ".serial.log"). A plain word (warm, latest, images)
// means other things too (a flag, a tag, a driver's name), so it is found
// only where it is used as a path: a whole literal passed to
// filepath.Join, path.Join or a function of os.
func TestNoFileNameLiteralsOutsideLayout(t *testing.T) {
	consts := constants(t)
	root := moduleRoot(t)
	self, _ := filepath.Abs(".")
	fset := token.NewFileSet()
	scanned := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor") || path == self {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		af, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		scanned++
		for _, hit := range literalHits(af, consts) {
			if why, ok := allowed[rel][hit.c.value]; ok && why != "" {
				continue
			}
			t.Errorf("%s: literal %s spells layout.%s (%q); use the constant", fset.Position(hit.pos), hit.lit, hit.c.name, hit.c.value)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 100 {
		t.Fatalf("scanned only %d files under %s: the walk missed the module", scanned, root)
	}
}

type hit struct {
	pos token.Pos
	lit string
	c   named
}

// literalHits finds the literals of f that spell a name of consts.
// Imports and struct tags are not names.
func literalHits(f *ast.File, consts []named) []hit {
	skip := map[*ast.BasicLit]bool{}
	pathArg := map[*ast.BasicLit]bool{}
	for _, im := range f.Imports {
		skip[im.Path] = true
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.Field:
			if n.Tag != nil {
				skip[n.Tag] = true
			}
		case *ast.CallExpr:
			if isPathCall(n.Fun) {
				for _, a := range n.Args {
					if lit, ok := a.(*ast.BasicLit); ok {
						pathArg[lit] = true
					}
				}
			}
		}
		return true
	})
	var out []hit
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING || skip[lit] {
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			return true
		}
		for _, c := range consts {
			if spells(s, c.value, pathArg[lit]) {
				out = append(out, hit{lit.Pos(), lit.Value, c})
			}
		}
		return true
	})
	return out
}

// spells reports whether literal s names v.
func spells(s, v string, asPath bool) bool {
	if s == v {
		// A plain word alone is a name only where it is a path.
		return asPath || strings.ContainsAny(v, "._")
	}
	if strings.HasPrefix(v, ".") || !strings.ContainsAny(v, "._") {
		// A prefix or suffix (".lock", ".make-") or a plain word inside a
		// longer text is too common to mean the file.
		return false
	}
	if s == "."+v {
		return true // joined to a name: m.Name+".serial.log"
	}
	// The last element of a path in a longer text ("%s/serial.log"); the
	// same word in prose or a media type is not a path.
	for i := strings.Index(s, "/"+v); i >= 0; {
		end := i + 1 + len(v)
		if end == len(s) || !isNameByte(s[end]) {
			return true
		}
		next := strings.Index(s[end:], "/"+v)
		if next < 0 {
			break
		}
		i = end + next
	}
	return false
}

func isNameByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-'
}

func isPathCall(fun ast.Expr) bool {
	sel, ok := fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	switch pkg.Name {
	case "os":
		return true
	case "filepath", "path":
		return sel.Sel.Name == "Join"
	}
	return false
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the package")
		}
		dir = parent
	}
}

// The scan itself must find what it is for: each shape the contract
// leaked in before, and none of the other meanings of a plain word.
func TestLiteralScanFindsTheOldLeaks(t *testing.T) {
	src := `package p
import ("fmt"; "os"; "path/filepath")
type T struct{ Latest bool ` + "`json:\"latest\"`" + ` }
func f(dir, name string) {
	_ = filepath.Join(dir, "known_hosts")        // 1 KnownHostsFile, FleetKnownHosts
	_ = fmt.Sprintf("console: %s/serial.log", dir) // 2 SerialFile
	_ = filepath.Join(dir, name+".serial.log")    // 3 SerialFile
	_ = filepath.Join(dir, "warm")                // 4 WarmFolder
	_, _ = os.ReadFile("disk.qcow2")              // 5 DiskFile, ImageDisk, TemplateDisk
	_ = []string{"latest"}                        // a registry tag: not a path
	_ = fmt.Sprint("warm", "state", "memory")     // words: not paths
	_ = "serial.logger"                           // another name
	_ = "/x/serial.log.1 and /y/serial.logs"      // a rotation and another name
	_ = "the fleet's known_hosts file"            // prose
	_ = "application/vnd.agentfleet.disk.qcow2"   // a media type
}`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, h := range literalHits(f, constants(t)) {
		got[h.c.name]++
	}
	want := map[string]int{"KnownHostsFile": 1, "FleetKnownHosts": 1, "SerialFile": 2, "WarmFolder": 1, "DiskFile": 1, "ImageDisk": 1, "TemplateDisk": 1}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: found %d literals, want %d (all hits: %v)", name, got[name], n, got)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: found where it is not a file name (all hits: %v)", name, got)
		}
	}
}
