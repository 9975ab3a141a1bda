#!/usr/bin/env bash
# Builds and vets fleet and the Packer plugin for every platform fleet
# supports, so a Linux-only call slipping into shared code fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
for platform in linux/amd64 linux/arm64 darwin/arm64 darwin/amd64; do
  export GOOS=${platform%/*} GOARCH=${platform#*/}
  echo "== $platform"
  go vet ./...
  go build -o /dev/null ./cmd/fleet
  go build -o /dev/null ./cmd/packer-plugin-agentfleet
done
