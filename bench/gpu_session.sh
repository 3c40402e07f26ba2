#!/usr/bin/env bash
# One call on a GPU machine: build, GPU tests, compute-sanitizer, uniattn-bench and the PyTorch peer, each
# stage under its own time limit, logs under $OUT (the device tool's output folder) and a short summary
# last. Stages are chosen with STAGES (default: all).
#
#   STAGES="build tests sanitize bench peer" bash bench/gpu_session.sh
#
# Needs googletest sources in .device-carry/googletest (the GPU image has no gtest; carry that folder),
# nlohmann-json and CLI11 in .device-carry/deps where the image lacks them (docs/gpu-notes.md) and, for the
# stories15M tests, models/stories15M (carry `models`).
set -u
OUT=${OUT:-/tmp/uniattn-out}
mkdir -p "$OUT"
STAGES=${STAGES:-"build tests sanitize bench peer"}
BUILD=${BUILD:-build-gpu}
BENCH_ARGS=${BENCH_ARGS:-"--decode 1x512,16x4096,32x2048 --prefill 512,2048 --steps 10 --warmup 3"}
PEER_ARGS=${PEER_ARGS:-"--decode 1x512,16x4096,32x2048 --steps 10 --warmup 3"}
T0=$(date +%s)
summary=()
note() { summary+=("$*"); echo "### $* (t=$(( $(date +%s) - T0 ))s)"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

# At most 8 files come back from the device tool: build.log tests.log sanitize.log kbench.log bench.log
# bench.json peer.log peer.json.
GPU=$(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader)
echo "$GPU" | tee "$OUT/build.log"

if has build; then
    if [[ ! -d /tmp/gtinst ]]; then
        cmake -S .device-carry/googletest -B /tmp/gt -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_INSTALL_PREFIX=/tmp/gtinst >/dev/null && cmake --build /tmp/gt --target install >/dev/null ||
            note "googletest build FAILED"
    fi
    cmake -S . -B "$BUILD" -G Ninja -DUNIATTN_SERVER=OFF -DUNIATTN_CUDA=ON \
        -DCMAKE_PREFIX_PATH="/tmp/gtinst;$PWD/.device-carry/deps" \
        >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; note "configure FAILED"; }
    if timeout 300 ninja -C "$BUILD" gpu_tests uniattn-bench uniattn-kernel-bench >>"$OUT/build.log" 2>&1; then
        note "build ok"
    else
        grep -E "error|FAILED" -A3 "$OUT/build.log" | head -40
        note "build FAILED"
    fi
    timeout 200 ninja -C "$BUILD" engine_tests >>"$OUT/build.log" 2>&1 && note "engine_tests build ok" ||
        note "engine_tests build FAILED (optional)"
fi

if has tests; then
    timeout 240 "$BUILD/bin/gpu_tests" --gtest_color=no >/tmp/gpu_tests.log 2>&1
    rc=$?
    cat /tmp/gpu_tests.log >"$OUT/tests.log"
    grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|metric|Failure|error:|got .* want" /tmp/gpu_tests.log | head -60
    note "gpu_tests rc=$rc: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' /tmp/gpu_tests.log | tr '\n' ' ')"
    if [[ -x "$BUILD/bin/engine_tests" ]]; then
        timeout 120 "$BUILD/bin/engine_tests" --gtest_color=no --gtest_filter='*/cuda' >/tmp/engine_cuda.log 2>&1
        rc=$?
        cat /tmp/engine_cuda.log >>"$OUT/tests.log"
        grep -E "^\[ +FAILED +\]|Failure" /tmp/engine_cuda.log | head -20
        note "engine_tests (cuda params) rc=$rc: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' /tmp/engine_cuda.log | tr '\n' ' ')"
    fi
fi

if has sanitize; then
    short='CudaOpsTest.SmallOps:CudaAttentionTest.BatchIsBitIdenticalToEachSequenceAlone:CudaAttentionTest.RopeWriteKvMatchesCpu:CudaModelTest.BatchMatchesSequencesAlone'
    timeout 200 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 "$BUILD/bin/gpu_tests" \
        --gtest_filter="$short" >/tmp/memcheck.log 2>&1
    note "memcheck rc=$? ($(grep -E 'ERROR SUMMARY' /tmp/memcheck.log | tail -1))"
    timeout 150 compute-sanitizer --tool racecheck --error-exitcode 3 "$BUILD/bin/gpu_tests" \
        --gtest_filter='CudaAttentionTest.BatchIsBitIdenticalToEachSequenceAlone' >/tmp/racecheck.log 2>&1
    note "racecheck rc=$? ($(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' /tmp/racecheck.log | tail -1))"
    cat /tmp/memcheck.log /tmp/racecheck.log >"$OUT/sanitize.log"
fi

if has kbench; then
    timeout 150 "$BUILD/bin/uniattn-kernel-bench" --config bench/configs/llama2-7b.json \
        --decode 1x512,16x4096,32x2048 >"$OUT/kbench.log" 2>&1
    note "kernel bench llama2-7b rc=$?"
    grep -E "Attention|T=1 |T=16 \[|copy" "$OUT/kbench.log"
fi

if has bench; then
    timeout 200 "$BUILD/bin/uniattn-bench" --config bench/configs/llama2-7b.json --variants std,8/0/32 \
        $BENCH_ARGS --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
    note "bench llama2-7b rc=$?"
    sed -n '/==== summary/,$p' "$OUT/bench.log"
    head -3 "$OUT/bench.log"
fi

if has bench3; then
    timeout 120 "$BUILD/bin/uniattn-bench" --config bench/configs/llama3-8b.json --variants std,4/16/33 \
        --decode 1x512,16x4096 --steps 10 --warmup 3 >/tmp/bench_llama3.log 2>&1
    note "bench llama3-8b rc=$?"
    sed -n '/==== summary/,$p' /tmp/bench_llama3.log
    cat /tmp/bench_llama3.log >>"$OUT/bench.log"
fi

if has peer; then
    PYTHONUNBUFFERED=1 timeout "${PEER_TIMEOUT:-240}" python3 bench/peers/torch_llama.py \
        --config bench/configs/llama2-7b.json $PEER_ARGS --json "$OUT/peer.json" >"$OUT/peer.log" 2>&1
    note "torch peer rc=$?"
    grep -E "^  decode|^torch" "$OUT/peer.log" | cut -c1-240
fi

echo "==== session summary ($(date -u +%FT%TZ), $GPU)"
printf '%s\n' "${summary[@]}"
