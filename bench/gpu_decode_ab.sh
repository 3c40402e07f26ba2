#!/usr/bin/env bash
# One device call: every GPU test, compute-sanitizer on chosen tests, then an A/B of uniattn-bench settings on
# Llama-2-7B decode steps, the settings alternating so all see the same card state. Binaries come built
# from here, packed by `bench/gpu_sampling_check.sh prepare` (device tool carry:
# ["build-cuda/carry/bins.tar.xz", "build-cuda/carry/stories15M"]).
#
#   SETTINGS="--pdl 0|--pdl 1" ROUNDS=2 CASES=1x512,16x4096,32x2048 VARIANTS=std,8/0/32 \
#   SANITIZE='CudaModelTest.Programmatic*' bash bench/gpu_decode_ab.sh
#
# SETTINGS: uniattn-bench arguments of each setting, settings separated by '|'. TESTS: gtest filter of the
# GPU tests run first. SANITIZE: gtest filter run under compute-sanitizer TOOLS (default memcheck racecheck).
#
# Logs and a summary go to $OUT (the device tool's output folder).
set -u
SETTINGS=${SETTINGS:---pdl 0|--pdl 1}
ROUNDS=${ROUNDS:-2}
CASES=${CASES:-1x512,16x4096,32x2048}
VARIANTS=${VARIANTS:-std}
SANITIZE=${SANITIZE:-}
TESTS=${TESTS:-*}
# shellcheck source=bench/gpu_carry_env.sh
. "$(dirname "$0")/gpu_carry_env.sh"
timeout 240 $B/gpu_tests --gtest_color=no --gtest_filter="$TESTS" >"$OUT/gpu_tests.log" 2>&1
say "gpu_tests rc=$? t=$(($(date +%s) - T0))s"
grep -E "^\[  PASSED|^\[  FAILED|^\[  SKIPPED|Failure" "$OUT/gpu_tests.log" | tee -a "$S"
if [ -n "$SANITIZE" ]; then
    for tool in ${TOOLS:-memcheck racecheck}; do
        timeout 120 compute-sanitizer --tool $tool --error-exitcode 3 $B/gpu_tests --gtest_color=no \
            --gtest_filter="$SANITIZE" >"$OUT/$tool.log" 2>&1
        say "$tool ($SANITIZE) rc=$? t=$(($(date +%s) - T0))s"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  PASSED|^\[  FAILED" "$OUT/$tool.log" | tee -a "$S"
    done
fi
IFS='|' read -r -a SETS <<<"$SETTINGS"
for r in $(seq "$ROUNDS"); do
    for set in "${SETS[@]}"; do
        echo "=== round $r $set" >>"$OUT/bench.log"
        # shellcheck disable=SC2086 # each setting is a list of arguments
        timeout 150 $B/uniattn-bench --config bench/configs/llama2-7b.json --decode "$CASES" --variants "$VARIANTS" \
            --steps 20 --warmup 3 $set >>"$OUT/bench.log" 2>&1
        say "bench round $r $set rc=$? t=$(($(date +%s) - T0))s"
    done
done
grep -E "^===|measured|reuse layers,|  decode" "$OUT/bench.log" | tee -a "$S"
