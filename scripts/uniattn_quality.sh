#!/usr/bin/env bash
# Reproduces docs/uniattn-quality.md's table: for each G/B/E, unify stories15M with no compensation
# and with closed-form Wc (calibrated on 64 sequences sampled from the original), then evaluate on the
# held-out text docs/data/heldout_stories.txt against the original.
#   scripts/uniattn_quality.sh [OUT_DIR] [CONFIG ...]     configs as G/B/E, default 3/0/6 2/2/6 3/3/6
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/${UNIATTN_BUILD_DIR:-build}/bin"
out="${1:-/tmp/uniattn-quality}"
shift || true
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(3/0/6 2/2/6 3/3/6)
model="$root/models/stories15M"
text="$root/docs/data/heldout_stories.txt"
mkdir -p "$out"

field() { grep "^$1:" | cut -d' ' -f2; }
row() {  # name dir
  local r
  r=$("$bin/uniattn-eval" --model "$2" --text "$text" --reference "$model" 2>/dev/null)
  printf '| %s | %s | %s | %s |\n' "$1" "$(field perplexity <<<"$r")" "$(field greedy_agreement <<<"$r")" \
    "$(field mean_kl <<<"$r")"
}

echo "| model | perplexity | greedy agreement | mean KL |"
echo "|---|---|---|---|"
row original "$model"
for c in "${configs[@]}"; do
  IFS=/ read -r g b e <<<"$c"
  "$bin/uniattn-convert" unify --model "$model" --out "$out/none-$g$b$e" --group "$g" --begin "$b" --end "$e" \
    --calib none >/dev/null 2>&1
  "$bin/uniattn-convert" unify --model "$model" --out "$out/cal-$g$b$e" --group "$g" --begin "$b" --end "$e" \
    2>"$out/cal-$g$b$e.log"
  row "$c, no Wc" "$out/none-$g$b$e"
  row "$c, closed-form Wc" "$out/cal-$g$b$e"
done
