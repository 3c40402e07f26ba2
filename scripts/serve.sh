#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then serves the default model with config/default.yaml.
# Extra arguments go to uniattn-serve (e.g. --port 8000). Without a server build (its libraries
# missing), falls back to interactive generation with uniattn-generate.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
build="${UNIATTN_BUILD_DIR:-build}"
if [ -x "$build/bin/uniattn-serve" ]; then
  exec "$build/bin/uniattn-serve" --config config/default.yaml "$@"
fi
echo "serve: uniattn-serve is not built; generating interactively instead (one prompt per line)" >&2
exec "$build/bin/uniattn-generate" --model models/stories15M --max-tokens 128 "$@"
