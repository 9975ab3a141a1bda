package builder

import (
	"testing"
	"time"
)

func TestPickNodeVersion(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	day := func(s string) time.Time { d, _ := time.Parse("2006-01-02", s); return d }
	versions := []string{"20.0.0", "20.19.5", "22.0.0", "22.9.0", "22.23.5", "23.0.0", "24.0.0", "24.12.0", "25.9.0", "26.0.0", "26.12.1", "27.0.0-rc.1", "26.13.0-nightly"}
	released := map[string]time.Time{"20.0.0": day("2023-04-18"), "22.0.0": day("2024-04-24"), "23.0.0": day("2024-10-16"), "24.0.0": day("2025-05-06"), "26.0.0": day("2026-04-21")}
	for want, got := range map[string]string{
		"lts":     "26.12.1", // 26 is older than six months on 2026-12-01
		"":        "26.12.1",
		"22":      "22.23.5",
		"25":      "25.9.0",
		"24.12.0": "24.12.0",
	} {
		v, err := pickNodeVersion(versions, released, want, now)
		if err != nil || v != got {
			t.Errorf("%q: %q %v, want %q", want, v, err, got)
		}
	}
	// In August 2026, 26 is not LTS yet: 24 is.
	if v, _ := pickNodeVersion(versions, released, "lts", day("2026-08-01")); v != "24.12.0" {
		t.Errorf("lts in August: %s", v)
	}
	for _, bad := range []string{"19", "22.99.0", "27.0.0-rc.1"} {
		if v, err := pickNodeVersion(versions, released, bad, now); err == nil {
			t.Errorf("%q picked %s", bad, v)
		}
	}
	if _, err := pickNodeVersion(versions, map[string]time.Time{}, "lts", now); err == nil {
		t.Error("lts without release dates picked a version")
	}
}

func TestValidNodeVersion(t *testing.T) {
	for _, ok := range []string{"", "lts", "system", "22", "26.1.0"} {
		if err := ValidNodeVersion(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"18", "18.20.4", "latest", "v22", "22.1", "22.x", "../22", " 22"} {
		if ValidNodeVersion(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
