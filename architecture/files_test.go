package architecture

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// fileDeps is which file of a package uses which other file's
// declarations (package-level names, methods and struct fields), with the
// number of uses.
type fileDeps map[string]map[string]int

// loadFileDeps type-checks the non-test files of the package in dir (module
// relative) against its dependencies' export data, which `go list -export`
// builds, and records every use that crosses files.
func loadFileDeps(t *testing.T, dir string) fileDeps {
	t.Helper()
	exports := exportData(t, "./"+dir)
	fset := token.NewFileSet()
	paths, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !buildsHere(f) {
			continue
		}
		files = append(files, f)
	}
	conf := types.Config{Importer: importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		e, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(e)
	})}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{}}
	p, err := conf.Check(module+"/"+dir, fset, files, info)
	if err != nil {
		t.Fatalf("type-check %s: %v", dir, err)
	}
	deps := fileDeps{}
	for id, obj := range info.Uses {
		if obj == nil || obj.Pkg() != p || !obj.Pos().IsValid() {
			continue
		}
		if !declaredAtTop(obj, p) {
			continue
		}
		from := filepath.Base(fset.Position(id.Pos()).Filename)
		to := filepath.Base(fset.Position(obj.Pos()).Filename)
		if from == to {
			continue
		}
		if deps[from] == nil {
			deps[from] = map[string]int{}
		}
		deps[from][to]++
	}
	return deps
}

// declaredAtTop is a package-level name, a method or a struct field: what
// one file can use of another's.
func declaredAtTop(obj types.Object, p *types.Package) bool {
	switch o := obj.(type) {
	case *types.Func:
		return true
	case *types.Var:
		return o.IsField() || o.Parent() == p.Scope()
	}
	return obj.Parent() == p.Scope()
}

// buildsHere drops files whose //go:build line excludes this platform.
func buildsHere(f *ast.File) bool {
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if strings.HasPrefix(c.Text, "//go:build ") {
				expr := strings.TrimPrefix(c.Text, "//go:build ")
				return !strings.Contains(expr, "darwin") || strings.Contains(expr, "linux") || strings.Contains(expr, "!darwin")
			}
		}
	}
	return true
}

func exportData(t *testing.T, pattern string) map[string]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-export", "-deps", "-json=ImportPath,Export", pattern)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("go list -export %s: %v", pattern, err)
	}
	m := map[string]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct{ ImportPath, Export string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		m[p.ImportPath] = p.Export
	}
	return m
}

// bothWays lists the pairs of files that use each other, with the uses in
// the smaller direction (the ones that go "up").
func (d fileDeps) bothWays() []string {
	var out []string
	for a, tos := range d {
		for b, n := range tos {
			if a < b && d[b][a] > 0 {
				out = append(out, fmt.Sprintf("%s ↔ %s (%d and %d uses)", a, b, n, d[b][a]))
			}
		}
	}
	sort.Strings(out)
	return out
}

// No two files of the controller use each other both ways: each file
// builds on the ones below it, so a newcomer can read them bottom up.
func TestControllerFilesDependOneWay(t *testing.T) {
	for _, dir := range []string{"fleet"} {
		for _, pair := range loadFileDeps(t, dir).bothWays() {
			t.Errorf("%s: %s", dir, pair)
		}
	}
}

// The test above must see uses across files, or it passes on nothing.
func TestFileDepsSeeUses(t *testing.T) {
	d := loadFileDeps(t, "fleet")
	total := 0
	for _, tos := range d {
		for _, n := range tos {
			total += n
		}
	}
	if len(d) < 5 || total < 50 {
		t.Fatalf("saw %d files using others, %d uses: the type-check is not recording uses", len(d), total)
	}
}

// maxMethods is where a type has grown past one concern.
const maxMethods = 40

// No type has more than about 40 methods: past that it owns several
// concerns, and a newcomer cannot tell which methods belong together.
func TestNoTypeOwnsTooMuch(t *testing.T) {
	counts := methodCounts(t)
	if len(counts) < 20 {
		t.Fatalf("found methods on only %d types: the walk is wrong", len(counts))
	}
	for typ, n := range counts {
		if n > maxMethods {
			t.Errorf("%s has %d methods (at most %d): split it by concern", typ, n, maxMethods)
		}
	}
}

// methodCounts is the number of methods declared on each named type of
// the module's non-test files, keyed "dir.Type".
func methodCounts(t *testing.T) map[string]int {
	t.Helper()
	counts := map[string]int{}
	fset := token.NewFileSet()
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != ".." && (strings.HasPrefix(n, ".") || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Recv == nil || len(fd.Recv.List) == 0 {
				continue
			}
			counts[filepath.ToSlash(filepath.Dir(path))[3:]+"."+recvName(fd.Recv.List[0].Type)]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return counts
}

func recvName(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.StarExpr:
		return recvName(x.X)
	case *ast.IndexExpr:
		return recvName(x.X)
	case *ast.IndexListExpr:
		return recvName(x.X)
	case *ast.Ident:
		return x.Name
	}
	return "?"
}
