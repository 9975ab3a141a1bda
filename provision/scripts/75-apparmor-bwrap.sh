#!/bin/sh
# Ubuntu 24.04 forbids unprivileged user namespaces unless an AppArmor
# profile allows them; bubblewrap (Claude Code's sandbox) needs one.
# Distributions without that restriction need nothing.
set -eu
[ -d /etc/apparmor.d ] || exit 0
[ -e /proc/sys/kernel/apparmor_restrict_unprivileged_userns ] || grep -q 'VERSION_ID="24' /etc/os-release || exit 0
cat > /etc/apparmor.d/bwrap <<'PROFILE'
abi <abi/4.0>,
include <tunables/global>

profile bwrap /usr/bin/bwrap flags=(unconfined) {
  userns,
  include if exists <local/bwrap>
}
PROFILE
echo "AppArmor profile for bwrap installed"
