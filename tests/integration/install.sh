#!/usr/bin/env bash
# Installs the integration tests' npm clients (versions pinned in package-lock.json) into
# tests/integration/node_modules, unless they are already there and newer than the lock file.
set -euo pipefail
cd "$(dirname "$0")"
if [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
npm ci --silent --no-audit --no-fund
