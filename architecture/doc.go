// Package architecture holds no code: its tests check the import rules
// ARCHITECTURE.md states, so that breaking one fails `go test ./...`.
package architecture
