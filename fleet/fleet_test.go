package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPlanNamesAndContinuesNumbering(t *testing.T) {
	l := Layout{Root: "/h"}
	req := SpawnRequest{Fleet: "proj", Count: 2, CPUs: 2, MemoryMiB: 1024}
	p, err := Plan(&State{}, req, l)
	if err != nil {
		t.Fatal(err)
	}
	if p[0].Name != "proj-1" || p[1].Name != "proj-2" || p[1].Dir != "/h/fleets/proj/machines/proj-2" {
		t.Fatalf("plan = %+v", p)
	}
	cur := &State{Machines: []*Machine{{Name: "proj-1", Index: 1}, {Name: "proj-3", Index: 3}}}
	p, err = Plan(cur, req, l)
	if err != nil {
		t.Fatal(err)
	}
	if p[0].Name != "proj-4" || p[1].Name != "proj-5" {
		t.Fatalf("spawning more must add after the highest index, got %+v", p)
	}
}

func TestPlanRefusesBadInput(t *testing.T) {
	ok := SpawnRequest{Fleet: "proj", Count: 1, CPUs: 1, MemoryMiB: 512}
	bad := map[string]func(*SpawnRequest){
		"zero":        func(r *SpawnRequest) { r.Count = 0 },
		"negative":    func(r *SpawnRequest) { r.Count = -1 },
		"huge":        func(r *SpawnRequest) { r.Count = 100000 },
		"slash":       func(r *SpawnRequest) { r.Fleet = "a/b" },
		"dotdot":      func(r *SpawnRequest) { r.Fleet = ".." },
		"upper":       func(r *SpawnRequest) { r.Fleet = "Proj" },
		"no cpus":     func(r *SpawnRequest) { r.CPUs = 0 },
		"tiny memory": func(r *SpawnRequest) { r.MemoryMiB = 16 },
	}
	for name, edit := range bad {
		r := ok
		edit(&r)
		if _, err := Plan(&State{}, r, Layout{Root: "/h"}); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
}

func TestFleetNameFromDir(t *testing.T) {
	for in, want := range map[string]string{"/src/MyProj": "myproj", "/src/my_proj.v2": "my-proj-v2", "/x/--a--": "a"} {
		got, err := FleetNameFromDir(in)
		if err != nil || got != want {
			t.Errorf("%s: got %q %v, want %q", in, got, err, want)
		}
	}
	if _, err := FleetNameFromDir("/"); err == nil {
		t.Error("root folder should need --name")
	}
}

func TestStoreConcurrentWritersLoseNothing(t *testing.T) {
	st := Store{Layout: Layout{Root: t.TempDir()}, Fleet: "proj"}
	const writers = 20
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st.Update(context.Background(), func(s *State) error {
				s.Machines = append(s.Machines, &Machine{Name: fmt.Sprintf("proj-%d", i+1), Index: i + 1})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Machines) != writers {
		t.Fatalf("got %d machines after %d concurrent updates", len(s.Machines), writers)
	}
}

func TestStoreCorruptFileIsReportedAndLeftAlone(t *testing.T) {
	st := Store{Layout: Layout{Root: t.TempDir()}, Fleet: "proj"}
	path := st.Layout.StateFile("proj")
	os.MkdirAll(st.Layout.FleetDir("proj"), 0o700)
	garbage := []byte(`{"version":1,"fleet":"proj","machines":[{"name":`)
	os.WriteFile(path, garbage, 0o600)
	_, err := st.Load()
	var ce *CorruptStateError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), path) {
		t.Fatalf("want corrupt-state error naming the file, got %v", err)
	}
	if err := st.Update(context.Background(), func(*State) error { return nil }); err == nil {
		t.Fatal("update over a corrupt file must fail")
	}
	if b, _ := os.ReadFile(path); string(b) != string(garbage) {
		t.Fatal("corrupt file was modified")
	}
}

func TestCheckMemory(t *testing.T) {
	if err := checkMemory(4, 2048, 4096); err == nil || !strings.Contains(err.Error(), "8192 MiB") || !strings.Contains(err.Error(), "4096 MiB") {
		t.Fatalf("want refusal with numbers, got %v", err)
	}
	if err := checkMemory(2, 1024, 4096); err != nil {
		t.Fatal(err)
	}
}

func TestSSHConfigPinsKeys(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	c := &Controller{Layout: l, Fleet: "proj"}
	s := &State{Fleet: "proj", Machines: []*Machine{
		{Name: "proj-1", SSHAddr: "127.0.0.1:4022", Desired: WantRunning, HostKey: "ssh-ed25519 AAAAkey1"},
		{Name: "proj-2", Desired: WantStopped, HostKey: "ssh-ed25519 AAAAkey2"},
	}}
	out, err := c.SSHConfig(s, s.Machines)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Host proj-1", "Port 4022", "StrictHostKeyChecking yes", "HostKeyAlias proj-1", "# proj-2 is not running"} {
		if !strings.Contains(out, want) {
			t.Errorf("config lacks %q:\n%s", want, out)
		}
	}
	kh, _ := os.ReadFile(l.KnownHosts("proj"))
	if string(kh) != "proj-1 ssh-ed25519 AAAAkey1\nproj-2 ssh-ed25519 AAAAkey2\n" {
		t.Fatalf("known_hosts = %q", kh)
	}
}

func TestPrefixWriterKeepsLinesWhole(t *testing.T) {
	var out strings.Builder
	var mu sync.Mutex
	a := newPrefixWriter(&out, &mu, "a: ")
	a.Write([]byte("one\ntw"))
	a.Write([]byte("o\nthree"))
	a.Flush()
	if out.String() != "a: one\na: two\na: three\n" {
		t.Fatalf("got %q", out.String())
	}
}

func TestBaseImagesInUseAcrossFleetsAndRefusesCorruptState(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	for fleet, base := range map[string]string{"a": "/img/v1/disk.qcow2", "b": "/img/v2/disk.qcow2"} {
		st := Store{Layout: l, Fleet: fleet}
		os.MkdirAll(l.FleetDir(fleet), 0o700)
		if err := st.Save(&State{Version: stateVersion, Fleet: fleet, Machines: []*Machine{{Name: fleet + "-1", Index: 1, BaseImage: base}}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := BaseImagesInUse(l)
	if err != nil || !got["/img/v1/disk.qcow2"] || !got["/img/v2/disk.qcow2"] || len(got) != 2 {
		t.Fatalf("in use = %v, %v", got, err)
	}
	os.WriteFile(l.StateFile("b"), []byte("{torn"), 0o600)
	if _, err := BaseImagesInUse(l); err == nil {
		t.Fatal("a corrupt state file must stop a prune, not hide a machine's base")
	}
}

// A guest that ran the clock's command seconds late lags by that much;
// one that is on time, ahead, or says nothing a clock would, does not.
func TestClockLag(t *testing.T) {
	now := time.Unix(1796229730, 500_000_000)
	for in, want := range map[string]int64{
		"1796229722.100000000\n": 8, "1796229730.400000000": 0, "1796229731.0": 0,
		"": 0, "not a time": 0, "-5": 0, "12.5": 0,
	} {
		if got := clockLag(in, now); got != want {
			t.Errorf("clockLag(%q) = %d, want %d", in, got, want)
		}
	}
}
