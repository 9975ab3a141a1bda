//go:build tools

// Package tools pins the Packer version the e2e suite builds.
package tools

import _ "github.com/hashicorp/packer"
