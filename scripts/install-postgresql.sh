#!/usr/bin/env bash
# Installs Debian's PostgreSQL server, which the test of `phonerec sweep --storage postgresql://...`
# starts on 127.0.0.1 (as an unprivileged user) for the length of the test; nothing else needs it.
# As root it runs apt-get; otherwise it prints the command to run and exits 1.
# Usage: bash scripts/install-postgresql.sh [--check]   (--check: only report, exit 1 if missing)
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null 2>&1; then
    echo "postgresql: installed"
    exit 0
fi
if [ "${1:-}" = "--check" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "postgresql missing (Debian: apt-get install postgresql)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgresql missing; run as root:  sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql" >&2
    exit 1
fi
echo "installing postgresql"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "postgresql installed"
