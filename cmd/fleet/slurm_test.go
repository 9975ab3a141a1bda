package main

import (
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/fleet"
)

// fleet.hcl's image_registry reaches the Slurm driver as the nodes'
// registry; a reference that cannot be one is refused before any job.
func TestSlurmImageRegistryFromFleetHCL(t *testing.T) {
	d, err := slurmDriver(&fleet.SlurmBlock{ImageRegistry: "10.1.2.3:5000/fleet/debian-12", ImageRegistryPlainHTTP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Registry == nil || d.Registry.Ref != "10.1.2.3:5000/fleet/debian-12" || !d.Registry.PlainHTTP {
		t.Fatalf("registry: %+v", d.Registry)
	}
	if d, err := slurmDriver(nil, nil); err != nil || d.Registry != nil {
		t.Fatalf("no slurm block: %+v %v", d, err)
	}
	for _, tc := range []struct {
		b    fleet.SlurmBlock
		want string
	}{
		{fleet.SlurmBlock{ImageRegistry: "not a reference"}, "image_registry"},
		{fleet.SlurmBlock{ImageRegistry: "host:5000"}, "image_registry"},
		{fleet.SlurmBlock{ImageRegistryPlainHTTP: true}, "without an image_registry"},
		{fleet.SlurmBlock{ImageRegistry: "localhost:5000/fleet/debian-12"}, "loopback"},
		{fleet.SlurmBlock{ImageRegistry: "127.0.0.1:5000/fleet/debian-12"}, "loopback"},
		{fleet.SlurmBlock{ImageRegistry: "[::1]:5000/fleet/debian-12"}, "loopback"},
	} {
		if _, err := slurmDriver(&tc.b, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v", tc.b, err)
		}
	}
}
