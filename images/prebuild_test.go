package images

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2/qcow2test"
)

// stageTemplate writes a finished template folder with meta, its disk an
// overlay on backing.
func stageTemplate(t *testing.T, dir string, meta TemplateMetaInfo, backing string) string {
	t.Helper()
	staged := filepath.Join(dir, layout.TemplateStagingPrefix+meta.Key)
	if err := os.MkdirAll(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	qcow2test.Write(filepath.Join(staged, TemplateDisk), qcow2test.Options{Backing: backing, BackingFormat: "qcow2"})
	os.WriteFile(filepath.Join(staged, TemplateState), []byte("state"), 0o644)
	os.WriteFile(filepath.Join(staged, TemplateMemory), []byte("ram"), 0o644)
	b, _ := json.Marshal(meta)
	os.WriteFile(filepath.Join(staged, TemplateMeta), b, 0o644)
	return staged
}

func prebuildMeta(key string, created time.Time) TemplateMetaInfo {
	return TemplateMetaInfo{Key: key, CPUs: 2, MemoryMiB: 2048, CreatedAt: created, Kind: KindPrebuild,
		TemplateKey: "warm-key", Project: "myproj", Setup: []string{"npm ci"}, InputsDigest: "d", Commit: "abc"}
}

// A prebuild is found only under its exact key and kind, is its owner's
// only, and is kept apart from warm templates both ways.
func TestPrebuildsAreKeyedOwnerOnlyAndApartFromWarmTemplates(t *testing.T) {
	s := Store{Root: t.TempDir()}
	img := addVersion(t, s, "debian-12", "v1")
	now := time.Now()
	p, err := PublishPrebuild(img, "pk1", stageTemplate(t, img.Dir, prebuildMeta("pk1", now), img.Disk))
	if err != nil {
		t.Fatal(err)
	}
	if p.Project != "myproj" || p.Setup[0] != "npm ci" || p.Kind != KindPrebuild || p.Bytes == 0 {
		t.Errorf("prebuild %+v", p)
	}
	if filepath.Dir(p.Dir) != filepath.Join(img.Dir, layout.PrebuildFolder) {
		t.Errorf("prebuild stored in %s", p.Dir)
	}
	for _, f := range []string{filepath.Dir(p.Dir), p.Dir, p.Disk(), p.Memory(), p.State(), filepath.Join(p.Dir, TemplateMeta)} {
		if fi, _ := os.Stat(f); fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: a prebuild holds the project's files, owner only", f, fi.Mode().Perm())
		}
	}
	for _, f := range []string{p.Disk(), p.State()} {
		if fi, _ := os.Stat(f); fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("a published prebuild's %s is writable", filepath.Base(f))
		}
	}
	if _, ok := FindPrebuild(img, "pk2"); ok {
		t.Error("a prebuild was found under another key")
	}
	if _, ok := FindTemplate(img, "pk1"); ok {
		t.Error("a prebuild was found as a warm template")
	}
	if got := Templates(img); len(got) != 0 {
		t.Errorf("warm templates %+v", got)
	}

	// A warm template's folder is never a prebuild, nor is a prebuild
	// folder whose template.json says it is a warm template.
	w, err := PublishTemplate(img, "warm-key", stageTemplate(t, img.Dir, TemplateMetaInfo{Key: "warm-key"}, img.Disk))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := FindPrebuild(img, "warm-key"); ok {
		t.Error("a warm template was found as a prebuild")
	}
	if _, err := PublishPrebuild(img, "plain", stageTemplate(t, img.Dir, TemplateMetaInfo{Key: "plain"}, img.Disk)); err == nil {
		t.Error("a template.json without kind prebuild was published as a prebuild")
	}
	if _, err := os.Stat(PrebuildDir(img, "plain")); !os.IsNotExist(err) {
		t.Error("a refused prebuild was left in place")
	}

	// A prebuild may be an overlay on the warm template it was made
	// from, and on no other disk.
	if _, err := PublishPrebuild(img, "pk-on-warm", stageTemplate(t, img.Dir, prebuildMeta("pk-on-warm", now.Add(time.Second)), w.Disk())); err != nil {
		t.Errorf("a prebuild on its warm template's disk: %v", err)
	}
	other := filepath.Join(t.TempDir(), "other.qcow2")
	qcow2test.Write(other, qcow2test.Options{})
	if _, err := PublishPrebuild(img, "pk-other", stageTemplate(t, img.Dir, prebuildMeta("pk-other", now), other)); err == nil {
		t.Error("a prebuild on another disk was published")
	}
	m := prebuildMeta("pk-wrong-warm", now)
	m.TemplateKey = "no-such-template"
	if _, err := PublishPrebuild(img, m.Key, stageTemplate(t, img.Dir, m, w.Disk())); err == nil {
		t.Error("a prebuild on a template disk its record does not name was published")
	}

	got := Prebuilds(img)
	if len(got) != 2 || got[0].Key != "pk-on-warm" || got[1].Key != "pk1" {
		t.Fatalf("prebuilds %+v, want pk-on-warm then pk1", got)
	}
	// A second publish of the same key keeps the first.
	again, err := PublishPrebuild(img, "pk1", stageTemplate(t, t.TempDir(), prebuildMeta("pk1", now.Add(time.Hour)), img.Disk))
	if err != nil || !again.CreatedAt.Equal(p.CreatedAt) {
		t.Errorf("republish: %+v %v", again, err)
	}
}

// prune --prebuilds removes the prebuilds no machine links to; one a
// machine uses stays, with its version.
func TestPrunePrebuildsKeepsTheOnesInUse(t *testing.T) {
	s := Store{Root: t.TempDir()}
	v1 := addVersion(t, s, "debian-12", "v1")
	v2 := addVersion(t, s, "debian-12", "v2")
	used, err := PublishPrebuild(v1, "a", stageTemplate(t, v1.Dir, prebuildMeta("a", time.Now()), v1.Disk))
	if err != nil {
		t.Fatal(err)
	}
	idle, err := PublishPrebuild(v2, "b", stageTemplate(t, v2.Dir, prebuildMeta("b", time.Now()), v2.Disk))
	if err != nil {
		t.Fatal(err)
	}
	warm, err := PublishTemplate(v2, "w", stageTemplate(t, v2.Dir, TemplateMetaInfo{Key: "w"}, v2.Disk))
	if err != nil {
		t.Fatal(err)
	}
	inUse := map[string]bool{used.Disk(): true}
	removed, err := s.PrunePrebuilds(inUse)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Key != "b" || removed[0].Image != "debian-12@v2" {
		t.Fatalf("removed %+v, want only b of v2", removed)
	}
	if _, err := os.Stat(idle.Dir); !os.IsNotExist(err) {
		t.Error("the idle prebuild is still there")
	}
	if _, ok := FindPrebuild(v1, "a"); !ok {
		t.Error("a prebuild in use was removed")
	}
	if _, ok := FindTemplate(v2, warm.Key); !ok {
		t.Error("a warm template was removed with the prebuilds")
	}
	// The version a prebuild in use lives in is kept by a version prune.
	if !usesDir(inUse, v1.Dir) {
		t.Error("a machine linked to a prebuild does not keep its version")
	}
	if err := RemovePrebuild(warm); err == nil {
		t.Error("RemovePrebuild removed a warm template")
	}
	if err := RemovePrebuild(Template{TemplateMetaInfo: TemplateMetaInfo{Kind: KindPrebuild}, Dir: v1.Dir}); err == nil {
		t.Error("RemovePrebuild removed a folder outside prebuilds/")
	}
}
