#!/usr/bin/env bash
# Prepares a Debian 12 machine for Douane's demo and tests: the system packages (as root, or through
# sudo), the npm dependencies (npm ci, skipped when node_modules matches package-lock.json) and the build.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian 12's own nodejs package is 18: Douane (and vitest 4) need Node.js 20.19 or later, with npm.
need="20.19.0"
have="$(node --version 2>/dev/null | sed 's/^v//' || true)"
if [ -z "$have" ] || ! command -v npm >/dev/null || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "setup: Node.js >= $need with npm is needed (found: ${have:-none}); install Node.js 20 LTS, e.g. from https://nodejs.org or NodeSource's Debian packages" >&2
  exit 1
fi

PACKAGES=(postfix dovecot-core clamav-daemon clamav-testfiles redis-server swaks libnet-ssleay-perl curl openssl prometheus haproxy tnef ca-certificates genisoimage libarchive-tools unar zip 7zip xz-utils bzip2 zstd cpio gcab cabextract)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  # Postfix is only used as a private test instance: do not let the package configure a system MTA.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
