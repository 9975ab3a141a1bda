// Command packer-plugin-agentfleet serves agentfleet's image builder to
// Packer: `source "agentfleet" "NAME" { image_name = "ubuntu-24.04" }`
// bakes, verifies, stores and promotes the same image `fleet image build`
// does (images/ubuntu-24.04.pkr.hcl is the default image's template).
//
// Install a local build with
//
//	packer plugins install --path ./packer-plugin-agentfleet github.com/agentfleet/agentfleet
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"
	"github.com/hashicorp/packer-plugin-sdk/version"
)

// pluginVersion is what `packer plugins installed` reports.
var pluginVersion = version.NewPluginVersion("0.1.0", "", "")

func main() {
	set := plugin.NewSet()
	set.RegisterBuilder(plugin.DEFAULT_NAME, new(Builder))
	set.SetVersion(pluginVersion)
	if err := set.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
