#!/usr/bin/env bash
# The serving benchmark on the CPU default model (docs/performance.md, "Serving benchmark (CPU, stories15M)"):
# starts uniattn-serve with config/default.yaml, runs `uniattn-bench serve` at concurrency 1, 8 and 32 and at a
# Poisson rate, prints each table with the load average just before it, and a Markdown summary at the end.
#
#   bench/serve_cpu.sh     env: BUILD=build  PORT=18000  OUT=/tmp/uniattn-serve-bench  IN=32  OUTLEN=64  RATE=1
#                               SET="engine.num_threads=1 ..." (uniattn-serve --set overrides, space-separated)
#
# IN is words per prompt (each one Llama token, plus BOS), OUTLEN the tokens generated per request (ignore_eos).
# With LLAMA_SERVER=/path/to/llama-server and GGUF=/path/to/stories15M.gguf the same runs also go to
# llama.cpp's server (started with -c 4096 -np 16 -t 2), alternating with ours run by run (`SERVER=1 BENCH=0
# bench/peers/llamacpp.sh` builds both; docs/performance.md has the figures).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD:-build}
port=${PORT:-18000}
out=${OUT:-/tmp/uniattn-serve-bench}
in=${IN:-32}
len=${OUTLEN:-64}
rate=${RATE:-1}
mkdir -p "$out"
scripts/fetch_model.sh "$build/bin/uniattn-convert" >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() {  # url pid
  for _ in $(seq 600); do
    curl -sf "$1/v1/models" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "serve_cpu: the server exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "serve_cpu: $1 not ready" >&2
  exit 1
}

sets=()
for s in ${SET:-}; do sets+=(--set "$s"); done
"$build/bin/uniattn-serve" --config config/default.yaml --port "$port" --grpc-port -1 "${sets[@]}" >"$out/uniattn.out" 2>"$out/uniattn.log" &
pids+=($!)
targets=("uniattn=http://127.0.0.1:$port")
wait_ready "http://127.0.0.1:$port" "${pids[-1]}"
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" --port $((port + 1)) -c 4096 -np 16 -t 2 >"$out/llamacpp.log" 2>&1 &
  pids+=($!)
  targets+=("llamacpp=http://127.0.0.1:$((port + 1))")
  wait_ready "http://127.0.0.1:$((port + 1))" "${pids[-1]}"
fi

run() {  # name args...
  local name=$1
  shift
  for t in "${targets[@]}"; do
    local who=${t%%=*} url=${t#*=}
    "$build/bin/uniattn-bench" serve --base-url "$url" --num-prompts 2 --concurrency 2 --input-len "$in" \
      --output-len 8 >/dev/null  # warm-up
    echo "### $who $name   load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "    uniattn-bench serve --base-url $url --input-len $in --output-len $len --seed 1 $*"
    "$build/bin/uniattn-bench" serve --base-url "$url" --input-len "$in" --output-len "$len" --seed 1 \
      --label "$who $name" --json "$out/$who-$name.json" "$@"
  done
}
run c1 --concurrency 1 --num-prompts 8
run c8 --concurrency 8 --num-prompts 32
run c32 --concurrency 32 --num-prompts 64
run poisson --request-rate "$rate" --num-prompts 32

echo
echo "| run | ok/sent | req/s | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
  for name in c1 c8 c32 poisson; do
    python3 - "$out/${t%%=*}-$name.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
f = lambda m: "%.0f / %.0f" % (d[m]["p50"], d[m]["p99"])
print("| %s | %d/%d | %.2f | %.1f | %s | %s | %s | %s |" % (d["label"], d["completed"], d["num_requests"],
      d["request_throughput"], d["output_throughput"], f("ttft_ms"), f("tpot_ms"), f("itl_ms"), f("e2e_ms")))
EOF
  done
done
