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
row() {  # name dir kv-bytes saving
  local r
  r=$("$bin/uniattn-eval" --model "$2" --text "$text" --reference "$model" 2>/dev/null)
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$3" "$4" "$(field perplexity <<<"$r")" \
    "$(field greedy_agreement <<<"$r")" "$(field mean_kl <<<"$r")"
}

echo "| model | KV bytes/token (fp16) | KV saving | perplexity | greedy agreement | mean KL |"
echo "|---|---|---|---|---|---|"
row original "$model" 6912 0
for c in "${configs[@]}"; do
  IFS=/ read -r g b e <<<"$c"
  info=$("$bin/uniattn-convert" unify --model "$model" --out "$out/none-$g$b$e" --group "$g" --begin "$b" \
    --end "$e" --calib none 2>/dev/null)
  "$bin/uniattn-convert" unify --model "$model" --out "$out/cal-$g$b$e" --group "$g" --begin "$b" --end "$e" \
    >/dev/null 2>"$out/cal-$g$b$e.log"
  kv=$(field kv_bytes_per_token_fp16 <<<"$info")
  saving=$(field kv_saving <<<"$info")
  row "$c, no Wc" "$out/none-$g$b$e" "$kv" "$saving"
  row "$c, closed-form Wc" "$out/cal-$g$b$e" "$kv" "$saving"
done
