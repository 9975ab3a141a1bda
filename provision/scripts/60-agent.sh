#!/bin/sh
# The agent user: passwordless sudo, in the docker group, owner of
# /workspace. cloud-init adds the fleet's key at each clone's first boot.
set -eu
user=${FLEET_AGENT_USER:-agent}
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
fi
getent group docker >/dev/null && usermod -aG docker "$user"
echo "$user ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/90-agentfleet-agent
chmod 0440 /etc/sudoers.d/90-agentfleet-agent
mkdir -p /workspace
chown "$user:$user" /workspace
