//go:build tools

// Package tools pins the packer-sdc version the plugin's code is generated with.
package tools

import _ "github.com/hashicorp/packer-plugin-sdk/cmd/packer-sdc"
