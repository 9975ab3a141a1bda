#!/bin/sh
# Extra certificate authorities the build host trusts (a TLS-intercepting
# corporate proxy, an internal registry), handed over by the builder as
# extra-ca.crt next to this script. Node does not read the system store on
# its own, so NODE_EXTRA_CA_CERTS points it there for every login.
set -eu
ca="$(dirname "$0")/extra-ca.crt"
[ -s "$ca" ] || { echo "no extra CA certificates"; exit 0; }
mkdir -p /usr/local/share/ca-certificates
cp "$ca" /usr/local/share/ca-certificates/agentfleet-extra.crt
update-ca-certificates >/dev/null 2>&1
grep -q '^NODE_EXTRA_CA_CERTS=' /etc/environment 2>/dev/null ||
  echo 'NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' >> /etc/environment
echo "installed $(grep -c 'BEGIN CERTIFICATE' "$ca") extra CA certificate(s)"
