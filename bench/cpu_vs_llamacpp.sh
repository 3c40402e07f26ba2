#!/usr/bin/env bash
# stories15M on the CPU: uniattn-generate beside llama.cpp's llama-bench, same threads, one run,
# alternating the two so that load on the machine hits both alike. Prints a Markdown table.
#   bench/cpu_vs_llamacpp.sh [ROUNDS]     (env: THREADS=2, BUILD=build-native, LLAMACPP_DIR)
# pp128: a 128-token prompt (BOS + 127), tokens/s of the prefill, median of warm runs.
# tg128: 128 tokens generated after BOS (ignore EOS), tokens/s, median of warm runs.
# Builds this repo with -march=native in $BUILD (llama.cpp is built with GGML_NATIVE=ON) and llama.cpp via
# bench/peers/llamacpp.sh (scratch dir, never in this repo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${1:-3}
threads=${THREADS:-2}
build=${BUILD:-build-native}
peer=${LLAMACPP_DIR:-/tmp/uniattn-peer-llamacpp}
model=models/stories15M

cmake -S . -B "$build" -G Ninja -DUNIATTN_NATIVE=ON -DUNIATTN_SERVER=OFF -DUNIATTN_CUDA=OFF -DUNIATTN_TESTS=OFF >/dev/null
cmake --build "$build" --target uniattn-generate >/dev/null
[ -x "$peer/build/bin/llama-bench" ] && [ -f "$peer/stories15M.gguf" ] || bench/peers/llamacpp.sh >/dev/null

# A prompt of exactly 127 tokens after BOS: words of the held-out stories until the count is reached.
prompt=""
for w in $(tr '\n' ' ' < docs/data/heldout_stories.txt); do
  n=$(printf '%s' "$prompt $w" | spm_encode --model="$model/tokenizer.model" --output_format=id | wc -w)
  [ "$n" -gt 127 ] && break
  prompt="${prompt:+$prompt }$w"
done
n=$(printf '%s' "$prompt" | spm_encode --model="$model/tokenizer.model" --output_format=id | wc -w)

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ours_pp=() ours_tg=() peer_pp=() peer_tg=()
for r in $(seq "$rounds"); do
  # 6 prompts in one process; the first is a warm-up.
  out=$(for i in 1 2 3 4 5 6; do printf '%s\n' "$prompt"; done |
    "$build/bin/uniattn-generate" --model "$model" --max-tokens 1 --threads "$threads" --stats 2>&1 >/dev/null)
  ours_pp+=("$(grep -o 'in [0-9.]* s ([0-9.]* tokens/s)' <<<"$out" | tail -n +2 | grep -o '([0-9.]*' | tr -d '(' | median)")
  out=$(for i in 1 2 3 4; do printf '\n'; done |
    "$build/bin/uniattn-generate" --model "$model" --max-tokens 128 --ignore-eos --threads "$threads" --stats 2>&1 >/dev/null)
  ours_tg+=("$(grep -o 'decode [0-9.]* tokens/s' <<<"$out" | tail -n +2 | awk '{print $2}' | median)")
  js=$("$peer/build/bin/llama-bench" -m "$peer/stories15M.gguf" -t "$threads" -p 128 -n 128 -r 5 -o json 2>/dev/null)
  peer_pp+=("$(python3 -c 'import json,sys; d=json.load(sys.stdin); print([x["avg_ts"] for x in d if x["n_prompt"]>0][0])' <<<"$js")")
  peer_tg+=("$(python3 -c 'import json,sys; d=json.load(sys.stdin); print([x["avg_ts"] for x in d if x["n_gen"]>0][0])' <<<"$js")")
done
m() { printf '%s\n' "$@" | median; }
echo "prompt tokens (with BOS): $((n + 1)); rounds: $rounds; threads: $threads"
echo "| engine | pp128 tokens/s | tg128 tokens/s | per-round pp | per-round tg |"
echo "|---|---|---|---|---|"
printf '| uniattn-generate (fp32, CPU backend) | %.0f | %.0f | %s | %s |\n' "$(m "${ours_pp[@]}")" "$(m "${ours_tg[@]}")" \
  "${ours_pp[*]}" "${ours_tg[*]}"
printf '| llama.cpp %s (F32 GGUF) | %.0f | %.0f | %s | %s |\n' "$(git -C "$peer/src" rev-parse --short HEAD)" \
  "$(m "${peer_pp[@]}")" "$(m "${peer_tg[@]}")" "${peer_pp[*]}" "${peer_tg[*]}"
