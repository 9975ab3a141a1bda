#!/usr/bin/env bash
# The main job on a fresh machine: install, build fleet, build an image if
# there is none, spawn two VMs, run a command in each, show them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (image builds need loop devices and mount): su -c $0, or sudo $0 where sudo is installed" >&2; exit 1; }
scripts/deps.sh
go build -o bin/fleet ./cmd/fleet
export FLEET_CACHE=${FLEET_CACHE:-/var/cache/agentfleet}
F=bin/fleet
if ! $F image ls --json | grep -q '"latest": true'; then
  echo "no base image yet. The Ubuntu 24.04 cloud image is not fetched by this build; building debian-12 from the apt mirror instead."
  $F image build debian-12
fi
$F spawn 2 --name demo --memory 1G
$F exec --all --name demo -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"'
$F ls --name demo
echo
echo "try: $F ssh demo-1    clean up: $F destroy --all --name demo"
