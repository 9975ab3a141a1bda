#!/bin/sh
# Tools every agent session expects, plus what Claude Code's own sandbox
# needs (bubblewrap, socat), and VirtualBox shared-folder support where the
# distribution ships it (Ubuntu's multiverse does, Debian 12 does not).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  git rsync tmux curl ca-certificates jq less procps openssh-client \
  bubblewrap socat xz-utils unzip >/dev/null
if apt-cache show virtualbox-guest-utils >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends virtualbox-guest-utils >/dev/null
  echo "virtualbox-guest-utils installed"
else
  echo "virtualbox-guest-utils: not in this distribution's archive, skipped"
fi
