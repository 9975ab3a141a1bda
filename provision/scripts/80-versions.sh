#!/bin/sh
# Records what the image is made of, for its manifest.
set -eu
v() { "$@" 2>/dev/null | head -1 || true; }
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -1)
docker=$(dpkg-query -W -f '${Version}' docker.io 2>/dev/null || true)
node=$(v node --version | sed 's/^v//')
claude=$(v claude --version | awk '{print $1}')
. /etc/os-release
mkdir -p /etc/agentfleet
cat > /etc/agentfleet/versions.json <<JSON
{"os": "$PRETTY_NAME", "kernel": "$kernel", "docker": "$docker", "node": "$node", "claude-code": "$claude"}
JSON
cat /etc/agentfleet/versions.json
