#!/usr/bin/env bash
# One device call for the model families (issue 16) on a GPU machine: builds there, then the GPU op and model
# tests (rope tables, biases, q/k norm, sliding windows against the CPU oracle), the engine's */cuda tests,
# whole-model logits against transformers for every family (bench/peers/hf_logits_check.py), and decode steps of
# the Mistral-7B shape with and without its 4096-token window at 16k context. Logs under $OUT.
#   carry: [".device-carry"]  (googletest, nlohmann-json, CLI11, stories15M in fp16: docs/gpu-notes.md)
set -u
OUT=${OUT:-/tmp/uniattn-out}
mkdir -p "$OUT" models
[ -e models/stories15M ] || ln -s "$PWD/.device-carry/stories15M" models/stories15M
B=build-gpu
T0=$(date +%s)
say() { echo "### $* (t=$(($(date +%s) - T0))s)" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
if [[ ! -d /tmp/gtinst ]]; then
    cmake -S .device-carry/googletest -B /tmp/gt -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/tmp/gtinst \
        >/dev/null && cmake --build /tmp/gt --target install >/dev/null
fi
cmake -S . -B $B -G Ninja -DUNIATTN_SERVER=OFF -DUNIATTN_CUDA=ON -DCMAKE_PREFIX_PATH="/tmp/gtinst;$PWD/.device-carry/deps" \
    >"$OUT/build.log" 2>&1
timeout 260 ninja -C $B gpu_tests engine_tests posttrain_engine_logits uniattn-bench >>"$OUT/build.log" 2>&1
say "build rc=$?"
grep -E "error" -A3 "$OUT/build.log" | head -20
timeout 170 $B/bin/gpu_tests --gtest_color=no >"$OUT/gpu_tests.log" 2>&1
say "gpu_tests rc=$?: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/gpu_tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED|Failure|metric.*(mistral|qwen|llama3|window)" "$OUT/gpu_tests.log" | head -40
timeout 60 $B/bin/engine_tests --gtest_color=no --gtest_filter='*/cuda' >"$OUT/engine_cuda.log" 2>&1
say "engine_tests */cuda rc=$?: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/engine_cuda.log" | tr '\n' ' ')"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/peers/hf_logits_check.py --engine $B/bin/posttrain_engine_logits \
    --stories models/stories15M --work /tmp/hfcheck --json "$OUT/hf_logits.json" >"$OUT/hf_logits.log" 2>&1
say "hf_logits_check rc=$?"
tail -40 "$OUT/hf_logits.log"
for c in mistral-7b-no-window mistral-7b; do
    timeout 70 $B/bin/uniattn-bench --config bench/configs/$c.json --decode 1x16384,16x16384 --steps 8 --warmup 2 \
        >"$OUT/bench-$c.log" 2>&1
    say "bench $c rc=$?"
    grep -E "decode|ms" "$OUT/bench-$c.log" | head -8
done
cat "$OUT/summary.txt"
