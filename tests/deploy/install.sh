#!/usr/bin/env bash
# Installs the deploy tests' npm packages (pinned in package-lock.json) into tests/deploy/node_modules,
# unless they are already there and newer than the lock file, and the pinned kubectl (fetch-kubectl.sh).
# Run as a ctest fixture; scripts/setup.sh runs the npm part too.
set -euo pipefail
cd "$(dirname "$0")"
if ! { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; }; then
  npm ci --silent --no-audit --no-fund
fi
./fetch-kubectl.sh
