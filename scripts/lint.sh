#!/usr/bin/env bash
# Vet, format and staticcheck: what `make lint` and CI run. staticcheck is
# pinned to a version the module proxy serves.
set -euo pipefail
cd "$(dirname "$0")/.."
go vet ./...
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
