#!/usr/bin/env bash
# The whole test suite on a fresh machine: unit tests, then the e2e suite,
# which builds a Debian 12 image (cached by recipe under FLEET_CACHE) and
# boots real QEMU VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the e2e image build needs loop devices and mount): su -c $0, or sudo $0 where sudo is installed" >&2; exit 1; }
scripts/deps.sh
export FLEET_CACHE=${FLEET_CACHE:-/var/cache/agentfleet}
echo "== lint (vet, gofmt, staticcheck)"
scripts/lint.sh
echo "== unit tests"
go test -count=1 ./...
echo "== cross-compile (linux and darwin, amd64 and arm64)"
scripts/cross.sh
echo "== e2e (real VMs)"
FLEET_E2E=1 go test -count=1 -timeout 75m -v ./e2e/ 2>&1 | tee /tmp/fleet-e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|e2e:)|^\s+--- '
test "${PIPESTATUS[0]}" = 0
