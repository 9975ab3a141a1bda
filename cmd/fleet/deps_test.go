package main

import (
	"os/exec"
	"strings"
	"testing"
)

// fleet holds model keys; it must not link what only the Packer plugin
// needs (go-getter and the cloud and secret-store clients behind the
// Packer SDK's packer package).
func TestFleetLinksNoPackerCloudClients(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"hashicorp/go-getter", "hashicorp/consul", "hashicorp/vault", "aws/aws-sdk-go", "packer-plugin-sdk/packer", "packer-plugin-sdk/sdk-internals"} {
			if strings.Contains(pkg, banned) {
				t.Errorf("fleet links %s", pkg)
			}
		}
	}
}
