#!/usr/bin/env bash
# One device call for the tensor-core decode attention (issue 17): builds on the GPU machine, runs the attention
# op tests and the whole-model logits tests against the CPU oracle (CUDA-core and tensor-core plans),
# compute-sanitizer on the tensor-core kernels, the per-layer attention timings of uniattn-kernel-bench, and decode
# steps and prefills of uniattn-bench with --tensor-core-attention 0 and 1 alternating. Logs under $OUT.
#   carry: [".device-carry"]  (googletest, nlohmann-json, CLI11, stories15M in fp16: docs/gpu-notes.md)
#   env: STAGES="build tests sanitize kernels decode prefill" (a subset runs only those), TESTS (gtest filter,
#        default all), ROUNDS (decode/prefill rounds, 2), CONFIGS (configs, "llama3-8b llama2-7b"),
#        PREFILL (prompt lengths, "512,2048,4096"), TCS (decode: tensor-core settings, "0 1"), MINCHUNKS
#        (decode: --decode-min-chunk values, "0"), EXACTS (decode: --exact-activations values, "1"); stage "gemms":
#        every op of uniattn-kernel-bench; stage "profile": ncu per-kernel times of decode steps (PROFILE_CASES,
#        "256x640 16x4096", standard layers); stage "load": checkpoint load speed (uniattn-bench load:
#        checksums of a 4-layer checkpoint on cpu/cuda, then a 13.5 GB Llama-2-7B-shape fp16 checkpoint)
set -u
OUT=${OUT:-/tmp/uniattn-out}
STAGES=${STAGES:-build tests sanitize kernels decode prefill}
mkdir -p "$OUT" models
[ -e models/stories15M ] || ln -s "$PWD/.device-carry/stories15M" models/stories15M
B=build-gpu
T0=$(date +%s)
say() { echo "### $* (t=$(($(date +%s) - T0))s)" | tee -a "$OUT/summary.txt"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
if has build; then
    if [[ ! -d /tmp/gtinst ]]; then
        cmake -S .device-carry/googletest -B /tmp/gt -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_INSTALL_PREFIX=/tmp/gtinst >/dev/null && cmake --build /tmp/gt --target install >/dev/null
    fi
    cmake -S . -B $B -G Ninja -DUNIATTN_SERVER=OFF -DUNIATTN_CUDA=ON \
        -DCMAKE_PREFIX_PATH="/tmp/gtinst;$PWD/.device-carry/deps" >"$OUT/build.log" 2>&1
    timeout 300 ninja -C $B gpu_tests engine_tests uniattn-bench uniattn-kernel-bench >>"$OUT/build.log" 2>&1
    say "build rc=$?"
    grep -E "error" -A3 "$OUT/build.log" | head -20
fi
if has tests; then
    timeout 280 $B/bin/gpu_tests --gtest_color=no --gtest_filter="${TESTS:-*}" >"$OUT/gpu_tests.log" 2>&1
    say "gpu_tests ${TESTS:-*} rc=$?: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/gpu_tests.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED|Failure|Which is|Expected|tensor cores" "$OUT/gpu_tests.log" | head -40
fi
if has sanitize; then
    for tool in ${SANITIZERS:-memcheck racecheck}; do
        timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 $B/bin/gpu_tests --gtest_color=no \
            --gtest_filter='CudaAttentionTest.MatchesCpu:CudaAttentionTest.ReuseMatchesCpu' >"$OUT/$tool.log" 2>&1
        say "$tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/$tool.log" | tr '\n' ' ')"
    done
fi
if has kernels; then
    for c in llama3-8b llama2-7b; do
        timeout 120 $B/bin/uniattn-kernel-bench --config bench/configs/$c.json --attention-only \
            --decode 1x512,16x640,16x4096,64x640,256x640 >"$OUT/kernels-$c.log" 2>&1
        say "kernel bench $c rc=$?"
        grep -E "copy|Attention" "$OUT/kernels-$c.log"
    done
fi
if has decode; then
    for round in $(seq ${ROUNDS:-2}); do
        for tc in ${TCS:-0 1}; do
            for mc in ${MINCHUNKS:-0}; do
                for ex in ${EXACTS:-1}; do
                    for c in ${CONFIGS:-llama3-8b llama2-7b}; do
                        log="$OUT/decode-$c-tc$tc-mc$mc-ex$ex-r$round.log"
                        timeout 100 $B/bin/uniattn-bench --config bench/configs/$c.json --variants std,8/0/32 \
                            --decode 1x512,16x4096,64x640,256x640 --steps 10 --warmup 2 --tensor-core-attention $tc \
                            --decode-min-chunk $mc --exact-activations $ex >"$log" 2>&1
                        say "decode $c tensor cores $tc min chunk $mc exact activations $ex round $round rc=$?"
                        grep -E "decode  B=" "$log" | head -14
                    done
                done
            done
        done
    done
fi
if has gemms; then  # every op of uniattn-kernel-bench (GEMMs at 1-256 rows, 16-bit activations, GEMVs, norms)
    for c in ${CONFIGS:-llama3-8b llama2-7b}; do
        timeout 200 $B/bin/uniattn-kernel-bench --config bench/configs/$c.json --decode 16x640 >"$OUT/gemms-$c.log" 2>&1
        say "kernel bench (all ops) $c rc=$?"
        grep -E "copy|T=" "$OUT/gemms-$c.log" | grep -v ksplit
    done
fi
if has profile; then  # per-kernel GPU time of whole decode steps (ncu, one step after the warm-up)
    for c in ${CONFIGS:-llama3-8b llama2-7b}; do
        for case in ${PROFILE_CASES:-256x640 16x4096}; do
            csv="$OUT/profile-$c-$case.csv"
            timeout 240 ncu --metrics gpu__time_duration.sum --csv --page raw --graph-profiling node \
                $B/bin/uniattn-bench --config bench/configs/$c.json --variants std --decode $case --steps 1 --sampling device \
                --warmup 1 >"$csv" 2>"$OUT/profile.err"
            say "ncu $c $case rc=$?"
            python3 bench/ncu_summary.py "$csv" 2
        done
    done
fi
if has prefill; then
    for round in $(seq ${ROUNDS:-2}); do
        for tc in 0 1; do
            for c in ${CONFIGS:-llama3-8b llama2-7b}; do
                timeout 150 $B/bin/uniattn-bench --config bench/configs/$c.json --variants std,8/0/32 \
                    --prefill ${PREFILL:-512,2048,4096} --steps 3 --warmup 1 --tensor-core-attention $tc \
                    >"$OUT/prefill-$c-tc$tc-r$round.log" 2>&1
                say "prefill $c tensor cores $tc round $round rc=$?"
                sed -n '/==== summary/,$p' "$OUT/prefill-$c-tc$tc-r$round.log"
            done
        done
    done
fi
if has load; then
    L=$B/bin/uniattn-bench
    timeout 60 $L load --write /tmp/l7b4 --config bench/configs/llama2-7b.json --layers 4 --file-dtype f16 >"$OUT/load.log" 2>&1
    for args in "--backend cpu --threads 16" "--backend cuda --dtype f32 --threads 1,16" \
        "--backend cuda --dtype f16 --threads 1,16" "--backend cuda --dtype f16 --threads 16 --chunk-mib 1"; do
        timeout 60 $L load --model /tmp/l7b4 --repeat 1 --checksum $args >>"$OUT/load.log" 2>&1
    done
    timeout 150 $L load --write /tmp/l7b --config bench/configs/llama2-7b.json --file-dtype f16 >>"$OUT/load.log" 2>&1
    timeout 120 $L load --model /tmp/l7b --backend cuda --dtype f16 --repeat 2 --threads 1,16 >>"$OUT/load.log" 2>&1
    say "load rc=$?"
    # Cold: the shards' pages dropped from the page cache first (posix_fadvise DONTNEED; no root needed).
    for t in 16 1; do
        python3 -c 'import os,sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' \
            /tmp/l7b/*.safetensors
        echo "cold (evicted from the page cache):" >>"$OUT/load.log"
        timeout 150 $L load --model /tmp/l7b --backend cuda --dtype f16 --repeat 1 --threads $t >>"$OUT/load.log" 2>&1
        say "cold load $t threads rc=$?"
    done
    grep -v "^$" "$OUT/load.log" | tail -30
fi
cat "$OUT/summary.txt"
