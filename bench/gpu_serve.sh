#!/usr/bin/env bash
# The serving benchmark on a GPU, uniattn-serve beside llama.cpp's llama-server (issue 17): seeded random
# weights of a real shape (standard, UniAttn 8/0/32 and 4/16/33), one server at a time on the same card, the same
# requests from `uniattn-bench serve` (400-word prompts, 128 output tokens, greedy, ignore_eos) at concurrency
# 1/16/64/256, TTFT/TPOT/ITL and output tokens/s, and where our engine's time went per level (its step phases
# from /metrics: schedule, forward, sample, and the time between steps); a Markdown table at the end. Two halves:
#
#   bench/gpu_serve.sh prepare   here, after `ninja -C build uniattn-serve uniattn-bench` (a CUDA + server
#                                build) and `CUDA=1 bench/peers/llamacpp.sh` (llama-server with CUDA in a scratch
#                                folder): packs into build/serve-carry the two binaries with the shared libraries
#                                the GPU image lacks (bins.tar.xz; EXTRA_BINS="build/bin/gpu_tests ..." packs more),
#                                llama-server with the bundle's converter (LLAMACPP=0 leaves llama.cpp out)
#                                (llamacpp.tar.xz) and the tokenizers of the shapes (tok.tar.xz)
#   bench/gpu_serve.sh run       on the GPU machine (device tool, carry ["build/serve-carry"]); env:
#                                SHAPES ("llama2-7b llama3-8b"), VARIANTS ("std 8/0/32 4/16/33 llamacpp"),
#                                LEVELS ("1 16 64 256"), IN (400), OUTLEN (128), SLOTS (256), STOP_AFTER
#                                (seconds after which no variant or level starts: the table still comes back
#                                inside the device call's limit), LC_LEVEL_S (llama.cpp's limit per level, 150);
#                                a variant of ours may add --set overrides: "std:engine.cuda.decode_min_chunk=256"
#                                (several joined by commas); the table rows go to summary.txt as each level
#                                ends; for a dry run of the script on a CPU: BACKEND=cpu CONFIGS=dir-of-tiny-configs TOK=tok-dir
#                                SETUP=0 (binaries from build/bin), SERVE_SET="engine.kv_cache_bytes=...", VARIANTS
#                                without llamacpp; checks first when packed (EXTRA_BINS): GPU_TESTS (gtest filter),
#                                SANITIZE ("memcheck racecheck": compute-sanitizer over SANITIZE_TESTS, GPU_TESTS by default),
#                                KBENCH (decode cases of uniattn-kernel-bench --attention-only; with a second build's
#                                kernel bench packed as uniattn-kernel-bench-base, KBENCH_REPS (2) rounds of base then
#                                this build, an A/B in one call; on KBENCH_SHAPES, SHAPES by default); FP8_SHAPES (the shapes of the
#                                fp8 engine bench, SHAPES by default; FP8_ALT: uniattn-bench flags of more fp8 runs,
#                                sets separated by ";", "--fp8-tensor-cores 0" by default, none skips them, on
#                                FP8_ALT_VARIANTS, std:fp8 by default;
#                                FP8_TESTS: the gtest filter of the fp8 stage; FP8_KV_DECODE: decode cases over an
#                                fp8 KV cache; with uniattn-kernel-bench packed, its --fp8-gemm table on the shapes of
#                                FP8_KBENCH, all by default, FP8_KBENCH_FLAGS e.g. "--fp8-rows 1,16"); PROFILE (decode
#                                cases BxC and prefills pN, e.g. "64x640 p2048": ncu per-kernel times
#                                of uniattn-bench's steps, bench/ncu_summary.py; PROFILE_VARIANTS: "std" by default;
#                                NCU_FLAGS: "--cache-control none --clock-control none" by default)
#
# The converter needs torch and numpy (the GPU image has them) and, for SentencePiece tokenizers (Llama-2),
# the sentencepiece module: where the image lacks it, bench/peers/spm_reader stands in (a reader of
# tokenizer.model's pieces, scores and types: all the converter asks of it).
set -u
C=build/serve-carry
case "${1:-}" in
prepare)
    set -e
    LLAMACPP_DIR=${LLAMACPP_DIR:-/tmp/uniattn-peer-llamacpp}
    if [ "${BINS_ONLY:-0}" = 1 ]; then rm -rf "$C/pkg" && mkdir -p "$C/pkg/bin" "$C/pkg/lib"; else
        rm -rf "$C" && mkdir -p "$C/pkg/bin" "$C/pkg/lib" "$C/lc/bin" "$C/tok/llama2-7b" "$C/tok/llama3-8b"
    fi
    cp build/bin/uniattn-serve build/bin/uniattn-bench ${EXTRA_BINS:-} "$C/pkg/bin/"  # EXTRA_BINS: e.g. gpu_tests
    strip "$C/pkg/bin/"*
    # Libraries the Ubuntu 24.04 GPU image has (or CUDA provides) stay behind; the rest travel.
    keep='^(linux-vdso|ld-linux|libc\.|libm\.|libstdc\+\+|libgcc_s|libdl\.|libpthread|librt\.|libcuda|libcublas|libz\.|libssl|libcrypto)'
    for b in "$C/pkg/bin/"*; do
        ldd "$b" | awk '$3 ~ /^\// {print $1, $3}' | grep -Ev "$keep" | while read -r name path; do
            [ -e "$C/pkg/lib/$name" ] || cp -L "$path" "$C/pkg/lib/$name"
        done
    done
    # bench/blas_stub.c: the CUDA path calls no BLAS; saves 5 MB of carry. Not with gpu_tests packed: their CPU
    # oracle needs the real library (a stub aborted the fp8 tests of 2026-12-07's first run).
    case " ${EXTRA_BINS:-} " in *gpu_tests*) BLAS_STUB=${BLAS_STUB:-0} ;; esac
    if [ "${BLAS_STUB:-1}" = 1 ]; then
        rm -f "$C/pkg/lib/"{libopenblas.so.0,libgfortran.so.5,libquadmath.so.0}
        gcc -O2 -shared -fPIC -Wl,-soname,libopenblas.so.0 bench/blas_stub.c -o "$C/pkg/lib/libopenblas.so.0"
    fi
    XZ_OPT=-9e tar cJf "$C/bins.tar.xz" -C "$C/pkg" bin lib
    rm -rf "$C/pkg"
    [ "${BINS_ONLY:-0}" = 1 ] && { du -sh "$C"/*; exit 0; }  # new binaries; llama.cpp and tokenizers as packed
    if [ "${LLAMACPP:-1}" = 1 ]; then  # LLAMACPP=0: no llama.cpp in the carry (no llamacpp variant to run)
        cp "$LLAMACPP_DIR/build-cuda/bin/llama-server" "$C/lc/bin/"
        strip "$C/lc/bin/llama-server"
        cp -r "$LLAMACPP_DIR/src/convert_hf_to_gguf.py" "$LLAMACPP_DIR/src/conversion" "$LLAMACPP_DIR/src/gguf-py" \
            "$C/lc/"
        cp -r bench/peers/spm_reader "$C/lc/"
        XZ_OPT=-9e tar cJf "$C/llamacpp.tar.xz" -C "$C" lc
    fi
    rm -rf "$C/lc"
    cp models/stories15M/tokenizer.model models/stories15M/tokenizer_config.json "$C/tok/llama2-7b/"
    cp models/tokenizers/llama-3.1/tokenizer.json models/tokenizers/llama-3.1/tokenizer_config.json "$C/tok/llama3-8b/"
    for s in llama2-7b llama3-8b; do python3 bench/peers/byte_token_ban.py "$C/tok/$s" >"$C/tok/$s/ban.txt"; done
    tar cJf "$C/tok.tar.xz" -C "$C" tok && rm -rf "$C/tok"  # the device tool carries 64 MiB at most
    du -sh "$C"/*
    exit 0
    ;;
run) ;;
*)
    echo "usage: bench/gpu_serve.sh prepare|run" >&2
    exit 2
    ;;
esac

OUT=${OUT:-/tmp/uniattn-out}
mkdir -p "$OUT"
T0=$(date +%s)
S="$OUT/summary.txt"
say() { echo "$* (t=$(($(date +%s) - T0))s)" | tee -a "$S"; }
W=/tmp/serve-work  # JSON results and server logs stay here: at most 8 files come back from $OUT
rm -rf "$W/json" "$W/logs" && mkdir -p "$W/json" "$W/logs"
if [ "${SETUP:-1}" = 1 ]; then
    for t in bins llamacpp tok; do  # llamacpp.tar.xz may stay behind (the carry's 64 MiB) when no variant needs it
        [ -f "$C/$t.tar.xz" ] && tar xJf "$C/$t.tar.xz" -C "$W"
    done
    export LD_LIBRARY_PATH=$W/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    BIN=$W/bin
    say "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
else
    BIN=$PWD/build/bin
fi
BACKEND=${BACKEND:-cuda}
sets=()  # SERVE_SET="engine.kv_cache_bytes=200000000 ...": more uniattn-serve --set overrides
for x in ${SERVE_SET:-}; do sets+=(--set "$x"); done
CONFIGS=${CONFIGS:-bench/configs}
TOK=${TOK:-$W/tok}
python3 -c 'import sentencepiece' 2>/dev/null || export PYTHONPATH=$W/lc/spm_reader
export PYTHONPATH=$W/lc/gguf-py${PYTHONPATH:+:$PYTHONPATH}
IN=${IN:-400}
OUTLEN=${OUTLEN:-128}
SLOTS=${SLOTS:-256}
PORT=18100
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
ready() {  # url: waits for /v1/models, at most 600 s
    for _ in $(seq 3000); do
        curl -sf "$1/v1/models" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
step_split() {  # url t0: where our engine's time went during a level (uniattn:step_duration_seconds by phase)
    curl -s "$1/metrics" >"$W/m1" 2>/dev/null || return 0
    python3 - "$W/m0" "$W/m1" "$2" <<'EOF'
import re, sys, time
def read(p):
    m = {}
    for line in open(p):
        r = re.match(r'uniattn:(step_duration_seconds_sum|engine_steps_total|prompt_tokens_total|'
                     r'generation_tokens_total)(\{[^}]*\})? ([0-9.e+-]+)', line)
        if r:
            ph = re.search(r'phase="(\w+)"', r[2] or "")
            m[(r[1], ph[1] if ph else None)] = float(r[3])
    return m
a, b, wall = read(sys.argv[1]), read(sys.argv[2]), time.time() - float(sys.argv[3])
if not b: sys.exit()
d = lambda k: b.get(k, 0) - a.get(k, 0)
steps = d(("engine_steps_total", None)) or 1
ph = {p: d(("step_duration_seconds_sum", p)) for p in ("schedule", "forward", "sample")}
busy = sum(ph.values())
print("; %d steps, %.0f prefill + %.0f decode tok; per step ms: schedule %.3f, forward %.2f, sample %.3f, "
      "outside steps %.3f (wall %.1f s, engine busy %.0f%%)" % (steps, d(("prompt_tokens_total", None)),
      d(("generation_tokens_total", None)), 1e3 * ph["schedule"] / steps, 1e3 * ph["forward"] / steps,
      1e3 * ph["sample"] / steps, 1e3 * (wall - busy) / steps, wall, 100 * busy / wall), end="")
EOF
}
row() {  # json: its table row
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
f = lambda m: "%.1f / %.1f" % (d[m]["p50"], d[m]["p99"])
print("| %s | %d/%d | %.1f | %s | %s | %s |" % (d["label"], d["completed"], d["num_requests"],
      d["output_throughput"], f("ttft_ms"), f("tpot_ms"), f("itl_ms")))
EOF
}
late() { [ $(($(date +%s) - T0)) -ge "${STOP_AFTER:-100000}" ]; }  # past STOP_AFTER s: nothing new starts
bench() {  # label [seconds per level]: every level against the server on $PORT
    local url=http://127.0.0.1:$PORT
    "$BIN/uniattn-bench" serve --base-url "$url" --num-prompts 4 --concurrency 4 --input-len 32 --output-len 8 \
        >/dev/null 2>&1  # warm-up
    for c in ${LEVELS:-1 16 64 256}; do
        local n=$((c < 8 ? 8 : 2 * c)) t0 rc
        late && { say "$1 c$c skipped: past STOP_AFTER"; continue; }
        curl -s "$url/metrics" >"$W/m0" 2>/dev/null
        t0=$(date +%s.%N)
        timeout "${2:-300}" "$BIN/uniattn-bench" serve --base-url "$url" --input-len "$IN" --output-len "$OUTLEN" \
            --seed 1 --concurrency "$c" --num-prompts "$n" --label "$1 c$c" --json "$W/json/$1-c$c.json" $BAN \
            >>"$OUT/serve.log" 2>&1
        rc=$?
        say "$1 c$c rc=$rc$(step_split "$url" "$t0")"
        [ -s "$W/json/$1-c$c.json" ] && row "$W/json/$1-c$c.json" | tee -a "$S"
    done
}
# Optional checks before the servers, with binaries packed by EXTRA_BINS: GPU_TESTS (a gtest filter for gpu_tests)
# and KBENCH (decode cases for uniattn-kernel-bench --attention-only on each shape).
if [ -n "${GPU_TESTS:-}" ] && [ -x "$BIN/gpu_tests" ]; then
    timeout 300 "$BIN/gpu_tests" --gtest_color=no --gtest_filter="$GPU_TESTS" >"$OUT/gpu_tests.log" 2>&1
    say "gpu_tests rc=$?: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/gpu_tests.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED|Failure|Which is|Expected|metric" "$OUT/gpu_tests.log" | head -40 | tee -a "$S"
fi
# SANITIZE ("memcheck racecheck"): compute-sanitizer tools over the gpu_tests of SANITIZE_TESTS (GPU_TESTS by default);
# the logs stay in $W (few files come back from $OUT), their summary lines go to summary.txt.
for tool in ${SANITIZE:-}; do
    [ -x "$BIN/gpu_tests" ] || break
    extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check full)
    timeout 240 compute-sanitizer --tool "$tool" "${extra[@]}" "$BIN/gpu_tests" --gtest_color=no \
        --gtest_filter="${SANITIZE_TESTS:-${GPU_TESTS:-CudaFp8*}}" >"$W/$tool.log" 2>&1
    say "compute-sanitizer $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|^\[  PASSED|^\[  FAILED  \] [0-9]' "$W/$tool.log" | tr '\n' ' ')"
done
# FP8 weights (issue 18), when the packed binaries have them (FP8=0 skips): the fp8 GPU tests against the CPU
# oracle with the MatMul tests the fp8 GEMV touched, then the engine-level decode and prefill of each shape with
# 16-bit and fp8 linear weights side by side (uniattn-bench --variants std,std:fp8).
if [ "${FP8:-1}" = 1 ] && [ "${SETUP:-1}" = 1 ] && "$BIN/uniattn-bench" --help 2>&1 | grep -q ':fp8'; then
    if [ -x "$BIN/gpu_tests" ]; then
        timeout 300 "$BIN/gpu_tests" --gtest_color=no \
            --gtest_filter="${FP8_TESTS:-CudaFp8*:CudaAttentionTest.*:CudaOpsTest.MatMulEveryPath:CudaOpsTest.FusedMatMulsMatchCpu:CudaModelTest.MmaDecodeGemmsMatchCpu}" \
            >"$OUT/fp8_tests.log" 2>&1
        say "fp8 gpu_tests rc=$?: $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$OUT/fp8_tests.log" | tr '\n' ' ')"
        grep -E "^\[  FAILED|Failure|metric" "$OUT/fp8_tests.log" | head -30 | tee -a "$S"
    fi
    for shape in ${FP8_SHAPES:-${SHAPES:-llama2-7b llama3-8b}}; do
        timeout 150 "$BIN/uniattn-bench" --config "$CONFIGS/$shape.json" --backend cuda --variants std,std:fp8 \
            --decode "${FP8_DECODE:-1x512,16x640,64x640}" --prefill "${FP8_PREFILL:-512}" --steps 10 --warmup 2 \
            >"$OUT/fp8-bench-$shape.log" 2>&1
        say "fp8 bench $shape rc=$?"
        grep -E "^std|decode|prefill|measured" "$OUT/fp8-bench-$shape.log" | tee -a "$S" >/dev/null
        # The fp8 variant again with other CUDA options: FP8_ALT, flag sets separated by ";" (none: no rerun).
        IFS=';' read -ra alts <<<"${FP8_ALT:---fp8-tensor-cores 0}"
        for alt in "${alts[@]}"; do
            [ "$alt" = none ] && continue
            # shellcheck disable=SC2086  # one FP8_ALT set: several flags
            timeout 100 "$BIN/uniattn-bench" --config "$CONFIGS/$shape.json" --backend cuda \
                --variants "${FP8_ALT_VARIANTS:-std:fp8}" $alt --decode "${FP8_DECODE:-1x512,16x640,64x640}" \
                --prefill "${FP8_PREFILL:-512}" --steps 10 --warmup 2 >>"$OUT/fp8-bench-$shape.log" 2>&1
            say "fp8 bench $shape, fp8 with $alt rc=$?"
        done
        if [ -n "${FP8_KV_DECODE:-}" ]; then  # fp16 and fp8 weights over an fp8 e4m3 KV cache
            timeout 100 "$BIN/uniattn-bench" --config "$CONFIGS/$shape.json" --backend cuda --variants std,std:fp8 \
                --kv-dtype fp8_e4m3 --decode "$FP8_KV_DECODE" --steps 10 --warmup 2 >>"$OUT/fp8-bench-$shape.log" 2>&1
            say "fp8 bench $shape, fp8 KV cache rc=$?"
        fi
        # every matrix at 1-2048 rows, fp16 beside fp8 under its options (FP8_KBENCH: the shapes, all by default)
        if [ -x "$BIN/uniattn-kernel-bench" ] && [[ " ${FP8_KBENCH:-$shape} " == *" $shape "* ]]; then
            # shellcheck disable=SC2086  # FP8_KBENCH_FLAGS: several flags
            timeout 150 "$BIN/uniattn-kernel-bench" --config "$CONFIGS/$shape.json" --fp8-gemm --reps 10 \
                ${FP8_KBENCH_FLAGS:-} >"$OUT/fp8-gemm-$shape.log" 2>&1
            say "fp8 GEMMs $shape rc=$?"
            grep -E "T=(1|16|64|256|2048) " "$OUT/fp8-gemm-$shape.log" | tee -a "$S" >/dev/null
        fi
    done
fi
if [ -n "${KBENCH:-}" ] && [ -x "$BIN/uniattn-kernel-bench" ]; then
    for shape in ${KBENCH_SHAPES:-${SHAPES:-llama2-7b llama3-8b}}; do
        if [ -x "$BIN/uniattn-kernel-bench-base" ]; then  # A/B: base and this build in turn, same card, same call
            : >"$OUT/kbench-$shape.log"
            for r in $(seq "${KBENCH_REPS:-2}"); do
                for v in base new; do
                    b="$BIN/uniattn-kernel-bench"
                    [ $v = base ] && b="$BIN/uniattn-kernel-bench-base"
                    echo "== $v round $r" >>"$OUT/kbench-$shape.log"
                    timeout 120 "$b" --config "$CONFIGS/$shape.json" --attention-only --decode "$KBENCH" \
                        >>"$OUT/kbench-$shape.log" 2>&1
                    say "kernel bench $shape $v round $r rc=$?"
                done
            done
            grep -E "^==|copy|Attention" "$OUT/kbench-$shape.log" | tee -a "$S" >/dev/null
            continue
        fi
        timeout 120 "$BIN/uniattn-kernel-bench" --config "$CONFIGS/$shape.json" --attention-only --decode "$KBENCH" \
            >"$OUT/kbench-$shape.log" 2>&1
        say "kernel bench $shape rc=$?"
        grep -E "copy|Attention" "$OUT/kbench-$shape.log" | tee -a "$S" >/dev/null
    done
fi
if [ -n "${PROFILE:-}" ]; then  # PROFILE="256x640 p2048": ncu per-kernel GPU time of decode steps / a prefill
    for shape in ${SHAPES:-llama2-7b llama3-8b}; do
        for case in $PROFILE; do
            dec=(--decode "$case")
            [ "$case" = prefill ] && dec=(--decode "")          # no decode case: PROFILE_FLAGS="--prefill 2048"
            [ "${case#p}" != "$case" ] && [ "$case" != prefill ] && dec=(--decode "" --prefill "${case#p}")
            for pv in ${PROFILE_VARIANTS:-std}; do  # e.g. "std std:fp8"
                # NCU_FLAGS: by default neither caches flushed nor clocks locked between kernels, as in a real step
                # (ncu's own defaults, "--cache-control all --clock-control base", inflate short kernels).
                # shellcheck disable=SC2086  # NCU_FLAGS, PROFILE_FLAGS: several flags each
                timeout 200 ncu ${NCU_FLAGS:---cache-control none --clock-control none} --metrics \
                    gpu__time_duration.sum --csv --page raw "$BIN/uniattn-bench" --config \
                    "$CONFIGS/$shape.json" --variants "$pv" "${dec[@]}" --steps 1 --warmup 1 --sampling device \
                    ${PROFILE_FLAGS:-} >"$W/profile.csv" 2>&1
                say "ncu $shape $pv $case ${PROFILE_FLAGS:-} rc=$?"
                python3 bench/ncu_summary.py "$W/profile.csv" 2 | tee -a "$S"
            done
        done
    done
fi
for shape in ${SHAPES:-llama2-7b llama3-8b}; do
    # Random weights emit tokens that leave the text invalid UTF-8, which llama.cpp's server answers with an error
    # event: both servers get the same logit_bias banning the tokens that are not whole UTF-8 on their own
    # (bench/peers/byte_token_ban.py, written by prepare: Llama-2's 256 byte tokens, 1352 of Llama-3's).
    late && { say "$shape skipped: past STOP_AFTER"; continue; }
    BAN=
    [ -s "$TOK/$shape/ban.txt" ] && [ "${BAN_BYTES:-1}" = 1 ] && BAN="--ban-tokens $(cat "$TOK/$shape/ban.txt")"
    M=/tmp/m-$shape
    rm -rf "$M-"*
    "$BIN/uniattn-bench" load --write "$M-std" --config "$CONFIGS/$shape.json" --file-dtype f16 --shard-gb 2 \
        --tokenizer-from "$TOK/$shape" >>"$OUT/prep.log" 2>&1
    say "$shape: wrote std rc=$?"
    for vs in ${VARIANTS:-std 8/0/32 4/16/33 llamacpp}; do
        # A variant is a model (std, G/B/E, llamacpp) with, for ours, more --set overrides after a colon:
        # "std:engine.cuda.decode_min_chunk=256" (several joined by commas).
        v=${vs%%:*} vsets=()
        if [ "$vs" != "$v" ]; then
            IFS=, read -ra xs <<<"${vs#*:}"
            for x in "${xs[@]}"; do vsets+=(--set "$x"); done
        fi
        tag=$shape-${v//\//-}
        for x in "${vsets[@]}"; do [ "$x" = --set ] || tag+=-${x##*.}; done  # ...-decode_min_chunk=256
        late && { say "$tag skipped: past STOP_AFTER"; continue; }
        if [ "$v" = llamacpp ] && [ ${#vsets[@]} -gt 0 ]; then  # --set overrides are ours: refused, not dropped
            say "$vs refused: --set overrides apply to uniattn-serve variants only"
            continue
        fi
        case $v in
        llamacpp)
            [ -f "$M.gguf" ] || python3 "$W/lc/convert_hf_to_gguf.py" "$M-std" --outtype f16 --outfile "$M.gguf" \
                >>"$OUT/prep.log" 2>&1
            say "$shape: gguf rc=$?"
            # SLOTS x (prompt + output + margin) tokens of KV, or what fits in 85% of the card beside the weights
            # (ours sizes its paged pool the same way: engine.kv_cache_memory_fraction).
            ctx=$(python3 - "$M-std" "$SLOTS" $((IN * 5 / 4 + OUTLEN + 64)) <<'EOF'
import json, os, subprocess, sys
d, slots, per_slot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = json.load(open(d + "/config.json"))
hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
kv = 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * hd * 2
weights = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
mib = int(subprocess.check_output(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]).split()[0])
fit = int((mib * 2**20 * 0.85 - weights) // kv)
print(min(slots * per_slot, fit // 256 * 256))
EOF
)
            # Per-slot KV (not -kvu: with one unified buffer every token attends over all of it, 20x slower here).
            say "$shape: llama-server -c $ctx -np $SLOTS"
            "$W/lc/bin/llama-server" -m "$M.gguf" --port $PORT -ngl 999 -np "$SLOTS" -c "$ctx" --no-webui \
                >"$W/logs/llamacpp-$shape.log" 2>&1 &
            pid=$!
            ;;
        *)
            dir=$M-std
            if [ "$v" != std ]; then
                dir=$M-${v//\//-}
                "$BIN/uniattn-bench" load --write "$dir" --config "$CONFIGS/$shape.json" --file-dtype f16 \
                    --uniattn "$v" --link-base "$M-std" >>"$OUT/prep.log" 2>&1
            fi
            "$BIN/uniattn-serve" --model "$dir" --port $PORT --grpc-port -1 --set engine.backend="$BACKEND" \
                --set engine.max_num_seqs="$SLOTS" --set engine.max_num_batched_tokens=8192 \
                --set engine.kv_cache_memory_fraction=0.85 --set logging.level=info "${sets[@]}" "${vsets[@]}" \
                >"$W/logs/uniattn-$tag.log" 2>&1 &
            pid=$!
            ;;
        esac
        if ready "http://127.0.0.1:$PORT"; then
            say "$tag ready"
            if [ "$v" = llamacpp ]; then bench "$tag" "${LC_LEVEL_S:-150}"; else bench "$tag"; fi
        else
            say "$tag did not start"
            tail -n 5 "$W/logs/"*"$shape"* | tee -a "$S"
        fi
        stop
    done
    rm -rf "$M-"* "$M.gguf"
done
echo
echo "| run | ok/sent | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms |"
echo "|---|---|---|---|---|---|"
for f in "$W"/logs/*; do  # the servers' logs, their tails
    echo "=== $f"
    tail -40 "$f"
done >"$OUT/servers.log"
for f in "$W"/json/*.json; do row "$f"; done | sort -V | tee -a "$S"
