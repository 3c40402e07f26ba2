#!/usr/bin/env bash
# Device sampling and the KV pool from free device memory on a GPU, with binaries built here (no build on
# the GPU machine, no googletest there). Two halves:
#
#   bench/gpu_sampling_check.sh prepare   here, after `cmake --build build-cuda --target gpu_tests uniattn-bench`
#                                         (-DUNIATTN_SERVER=OFF): packs the binaries, the shared libraries the
#                                         GPU image lacks (OpenBLAS, SentencePiece, gfortran, quadmath, gomp)
#                                         and stories15M with its matrices in fp16 into build-cuda/carry
#   bench/gpu_sampling_check.sh run       on the GPU machine (device tool: carry
#                                         ["build-cuda/carry/bins.tar.xz", "build-cuda/carry/stories15M"]):
#                                         all GPU tests, compute-sanitizer memcheck of the sampling tests,
#                                         racecheck of one, and uniattn-bench decode steps at batch 1/16/64
#                                         (Llama-2-7B shapes, vocab 32000) with no / host / device sampling.
#
# stories15M travels with fp16 matrices (30 MB instead of 59 MB, to fit the 64 MiB a call may carry). The
# CUDA backend runs it in fp16 anyway (default weight dtype), so the engine tests compute exactly what the
# fp32 checkpoint gives them; the CPU-oracle tests then compare against the fp16-rounded model.
set -u
C=build-cuda/carry
case "${1:-}" in
prepare)
    set -e
    rm -rf "$C/pkg" && mkdir -p "$C/pkg/bin" "$C/pkg/lib" "$C/stories15M"
    cp build-cuda/bin/gpu_tests build-cuda/bin/uniattn-bench "$C/pkg/bin/"
    [ -x build-cuda/bin/uniattn-kernel-bench ] && cp build-cuda/bin/uniattn-kernel-bench "$C/pkg/bin/"
    # posttrain_engine_logits: bench/peers/hf_logits_check.py (engine logits against transformers)
    [ -x build-cuda/bin/posttrain_engine_logits ] && cp build-cuda/bin/posttrain_engine_logits "$C/pkg/bin/"
    strip "$C/pkg/bin/"*
    for lib in libopenblas.so.0 libsentencepiece.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
        cp -L "$(ldd build-cuda/bin/gpu_tests | awk -v l="$lib" '$1 == l {print $3}')" "$C/pkg/lib/"
    done
    tar cJf "$C/bins.tar.xz" -C "$C/pkg" bin lib
    cp models/stories15M/config.json models/stories15M/tokenizer.model models/stories15M/tokenizer_config.json \
        "$C/stories15M/"
    python3 - models/stories15M/model.safetensors "$C/stories15M/model.safetensors" <<'PY'
import array, json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, 'rb').read()
n = struct.unpack('<Q', data[:8])[0]
header = json.loads(data[8:8 + n])
out, chunks, off = {}, [], 0
for name, t in header.items():
    if name == '__metadata__':
        out[name] = t
        continue
    a, b = t['data_offsets']
    raw, dtype = data[8 + n + a:8 + n + b], t['dtype']
    if dtype == 'F32' and len(t['shape']) == 2:  # matrices to fp16; norm weights stay fp32
        f = array.array('f')
        f.frombytes(raw)
        raw, dtype = struct.pack('<%de' % len(f), *f), 'F16'
    out[name] = {'dtype': dtype, 'shape': t['shape'], 'data_offsets': [off, off + len(raw)]}
    chunks.append(raw)
    off += len(raw)
h = json.dumps(out).encode()
h += b' ' * (-len(h) % 8)
with open(dst, 'wb') as f:
    f.write(struct.pack('<Q', len(h)) + h + b''.join(chunks))
PY
    du -sh "$C/bins.tar.xz" "$C/stories15M"
    ;;
run)
    # shellcheck source=bench/gpu_carry_env.sh
    . "$(dirname "$0")/gpu_carry_env.sh"
    ldd $B/gpu_tests | grep "not found" | tee -a "$S"
    timeout 220 $B/gpu_tests --gtest_color=no >"$OUT/gpu_tests.log" 2>&1
    say "gpu_tests rc=$? t=$(($(date +%s) - T0))s"
    grep -E "^\[  PASSED|^\[  FAILED|^\[  SKIPPED|metric|Failure" "$OUT/gpu_tests.log" | tee -a "$S"
    timeout 70 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 $B/gpu_tests --gtest_color=no \
        --gtest_filter='CudaSamplingTest.SweepOfU*:CudaSamplingTest.EngineDevice*' >"$OUT/memcheck.log" 2>&1
    say "memcheck (sweep, engine) rc=$? t=$(($(date +%s) - T0))s"
    grep -E "ERROR SUMMARY|^\[  PASSED|^\[  FAILED" "$OUT/memcheck.log" | tee -a "$S"
    timeout 110 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 $B/gpu_tests --gtest_color=no \
        --gtest_filter='CudaSamplingTest.EveryParameter*' >"$OUT/memcheck2.log" 2>&1
    say "memcheck (all combinations) rc=$? t=$(($(date +%s) - T0))s"
    grep -E "ERROR SUMMARY|^\[  PASSED|^\[  FAILED" "$OUT/memcheck2.log" | tee -a "$S"
    timeout 45 compute-sanitizer --tool racecheck --error-exitcode 3 $B/gpu_tests --gtest_color=no \
        --gtest_filter='CudaSamplingTest.SweepOfU*' >"$OUT/racecheck.log" 2>&1
    say "racecheck (sweep) rc=$? t=$(($(date +%s) - T0))s"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  PASSED|^\[  FAILED" "$OUT/racecheck.log" | tee -a "$S"
    for s in none host device; do
        timeout 40 $B/uniattn-bench --config bench/configs/llama2-7b.json --decode 1x512,16x512,64x512 --steps 20 \
            --warmup 3 --sampling $s >>"$OUT/bench.log" 2>&1
        say "bench $s rc=$? t=$(($(date +%s) - T0))s"
    done
    grep -E "measured|  decode" "$OUT/bench.log" | tee -a "$S"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
