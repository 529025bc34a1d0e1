#!/usr/bin/env bash
# Install Debian packages the way this machine allows, or stop with the one command the user should run.
#
#   scripts/system_packages.sh PACKAGE...
#
# As root: apt-get directly. Otherwise with sudo when it works without a password (sudo -n) or when a
# terminal can answer its prompt. Where neither works (no root, no usable sudo), nothing is changed: the
# exact command to run is printed and the exit status is 2, so `make` stops in its first lines.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 PACKAGE..." >&2
  exit 2
fi
apt_cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $*"
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
  as_root=(sudo)
  echo "not root: installing $* with sudo"
else
  echo "error: installing the system package(s) $* needs root, and sudo is not available here." >&2
  if command -v sudo >/dev/null 2>&1; then
    echo "Run this once (it asks for your password), then run make again:" >&2
    echo "  sudo sh -c '$apt_cmd'" >&2
  else
    echo "Run this once as root (for example after 'su -'), then run make again:" >&2
    echo "  sh -c '$apt_cmd'" >&2
  fi
  exit 2
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
