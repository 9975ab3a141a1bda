package e2e

import (
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The VM tests share this host's cores through vmSlots, handed out longest
// test first. Go would run its parallel tests in whatever order they win
// its semaphore: the longest then often started last and ran alone at the
// end, one test's guests on two cores (TestEgress started seven minutes
// in and finished a quarter of an hour after everything else). TestMain
// lifts Go's own limit so every parallel test waits here instead.

// vmSlotCount is how many VM tests run at once: each boots or restores
// one to four guests, which fill two cores under TCG.
const vmSlotCount = 2

// expectedSeconds is about how long each VM test took in its slot in a
// quiet run of the whole suite (stop 31): only the order is taken from it.
// A test not listed goes after the listed ones.
var expectedSeconds = map[string]int{
	"TestImageFromCloudSourceOverSSH":        750,
	"TestEgress":                             670,
	"TestAgentSessions":                      300,
	"TestWarmClones":                         240,
	"TestPrebuild":                           280,
	"TestFork":                               250,
	"TestCockpit":                            220,
	"TestDiskFull":                           200,
	"TestWarmCloneSurvivesAKill":             200,
	"TestQEMUDriverConformance":              200,
	"TestSuspendResume":                      190,
	"TestFleetLifecycle":                     150,
	"TestWorkspaceGit":                       140,
	"TestWorkspaceShared":                    140,
	"TestARM64Guest":                         130,
	"TestHostileGuestOutput":                 105,
	"TestImageThroughARegistry":              95,
	"TestMeteringHoldsUnderConcurrentCalls":  55,
	"TestWorkspaceHostileAgent":              45,
	"TestWorkspaceRsync":                     35,
	"TestPullRefusesADiskThatNamesAHostFile": 20,
}

type slotWaiter struct {
	seconds int
	name    string
	ready   chan struct{}
}

type slots struct {
	mu      sync.Mutex
	free    int
	waiting []*slotWaiter
	// settled: the tests Go released together have all asked; until
	// then no slot is handed out, or the first to ask would win it.
	settled, settling bool
}

// settleTime is how long the first test to ask waits for the others Go
// released with it.
const settleTime = time.Second

var vmSlots = &slots{free: vmSlotCount}

// takeSlot waits for one of the VM slots, after the longer tests already
// waiting, and gives it back when t and its cleanups are done. Call it
// after t.Parallel, before the test boots anything.
func takeSlot(t *testing.T) {
	t.Helper()
	w := &slotWaiter{seconds: expectedSeconds[t.Name()], name: t.Name(), ready: make(chan struct{})}
	vmSlots.mu.Lock()
	vmSlots.waiting = append(vmSlots.waiting, w)
	if !vmSlots.settling {
		vmSlots.settling = true
		time.AfterFunc(settleTime, func() {
			vmSlots.mu.Lock()
			vmSlots.settled = true
			vmSlots.handOut()
			vmSlots.mu.Unlock()
		})
	}
	vmSlots.handOut()
	vmSlots.mu.Unlock()
	t0 := time.Now()
	<-w.ready
	// Go's duration for the test counts this wait too.
	if waited := time.Since(t0); waited > 5*time.Second {
		t.Logf("waited %s for a VM slot", waited.Round(time.Second))
	}
	// Registered first, so it runs after every cleanup the test adds
	// (its machines are gone before the next test starts).
	t.Cleanup(func() {
		vmSlots.mu.Lock()
		vmSlots.free++
		vmSlots.handOut()
		vmSlots.mu.Unlock()
	})
}

// handOut gives free slots to the longest waiting tests (ties by name).
// Called with mu held.
func (s *slots) handOut() {
	if !s.settled {
		return
	}
	sort.SliceStable(s.waiting, func(i, j int) bool {
		a, b := s.waiting[i], s.waiting[j]
		if a.seconds != b.seconds {
			return a.seconds > b.seconds
		}
		return a.name < b.name
	})
	for s.free > 0 && len(s.waiting) > 0 {
		w := s.waiting[0]
		s.waiting = s.waiting[1:]
		s.free--
		close(w.ready)
	}
}

// parallelVM is t.Parallel and takeSlot: a VM test that runs beside one
// other.
func parallelVM(t *testing.T) {
	t.Helper()
	t.Parallel()
	takeSlot(t)
}

// Slots go to the longest waiting tests, ties by name, no more than are
// free, and none before the tests released together have all asked.
func TestSlotsGoToTheLongestWaitingTestFirst(t *testing.T) {
	s := &slots{free: 1, settled: true}
	for _, w := range []*slotWaiter{{seconds: 20, name: "short"}, {seconds: 900, name: "egress"}, {seconds: 0, name: "unlisted"}, {seconds: 300, name: "b"}, {seconds: 300, name: "a"}} {
		w.ready = make(chan struct{})
		s.waiting = append(s.waiting, w)
	}
	all := append([]*slotWaiter(nil), s.waiting...)
	var order []string
	started := map[string]bool{}
	for round := 0; round < len(all); round++ {
		s.handOut()
		for _, w := range all {
			select {
			case <-w.ready:
				if !started[w.name] {
					started[w.name] = true
					order = append(order, w.name)
				}
			default:
			}
		}
		if len(order) != round+1 {
			t.Fatalf("round %d: running %v with one slot", round, order)
		}
		s.free++ // it finished
	}
	if got := strings.Join(order, " "); got != "egress a b short unlisted" {
		t.Errorf("order %s", got)
	}
	unsettled := &slots{free: 1}
	w := &slotWaiter{name: "x", ready: make(chan struct{})}
	unsettled.waiting = append(unsettled.waiting, w)
	unsettled.handOut()
	select {
	case <-w.ready:
		t.Error("a slot was handed out before the released tests had all asked")
	default:
	}
}
