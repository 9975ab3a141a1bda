//go:build !linux

package qemu

import "os"

// cacheMapped: elsewhere the file is read instead.
func cacheMapped(*os.File) (bool, error) { return false, nil }
