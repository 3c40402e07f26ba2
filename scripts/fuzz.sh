#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan+UBSan and coverage instrumentation in a
# separate build dir, then runs each for a bounded time from its checked-in seed corpus
# (tests/fuzz/corpus/<target>/, which also holds every crash found as a regression input). Fails on any
# crash, leak, sanitizer report or timeout.
#   FUZZ_SECONDS      seconds per target (default 30)
#   FUZZ_TARGETS      targets to run (default: all that were built)
#   FUZZ_BUILD_DIR    build dir (default build-asan, shared with scripts/sanitize.sh: scripts/configure-asan.sh)
#   FUZZ_JOBS         build parallelism (default nproc)
#   FUZZ_SEED         libFuzzer -seed (default: libFuzzer picks one and logs it as "Seed: N"); scripts/test.sh
#                     fixes it so that a CI failure replays with the same mutation sequence
# Crash inputs are written to $FUZZ_BUILD_DIR/artifacts/<target>/; new corpus entries stay in
# $FUZZ_BUILD_DIR/corpus/<target>/ (the checked-in corpus is only read).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build="${FUZZ_BUILD_DIR:-build-asan}"
seconds="${FUZZ_SECONDS:-30}"
jobs="${FUZZ_JOBS:-$(nproc)}"
all_targets="fuzz_safetensors fuzz_json fuzz_model_config fuzz_openai_request fuzz_http_request fuzz_detokenize
  fuzz_hf_tokenizer fuzz_jinja"

t0=$(date +%s)
scripts/configure-asan.sh "$build"
cmake --build "$build" --target fuzzers -j "$jobs"
t1=$(date +%s)
echo "fuzz: built in $((t1 - t0)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1
status=0
summary=""
seed_of() { grep -o 'Seed: [0-9]*' "$1" | head -1 | grep -o '[0-9]*$' || echo '?'; }
for t in ${FUZZ_TARGETS:-$all_targets}; do
  bin="$build/bin/$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $t was not built (missing dependency); skipping"
    summary+="$t: skipped (not built)"$'\n'
    continue
  fi
  if [ "$t" = fuzz_detokenize ] && [ -z "${UNIATTN_FUZZ_MODEL_DIR:-}" ] && [ ! -f models/stories15M/tokenizer.model ]; then
    echo "fuzz: $t needs models/stories15M/tokenizer.model (scripts/fetch_model.sh); skipping"
    summary+="$t: skipped (no tokenizer)"$'\n'
    continue
  fi
  if [ "$t" = fuzz_hf_tokenizer ] && [ -z "${UNIATTN_FUZZ_TOKENIZER_DIR:-}" ] &&
    [ ! -f models/tokenizers/llama-3.1/tokenizer.json ]; then
    echo "fuzz: $t needs models/tokenizers/llama-3.1 (scripts/fetch_testdata.sh); skipping"
    summary+="$t: skipped (no tokenizer.json)"$'\n'
    continue
  fi
  seeds="tests/fuzz/corpus/$t"
  work="$build/corpus/$t"
  art="$build/artifacts/$t"
  mkdir -p "$work" "$art"
  log="$build/$t.log"
  echo "fuzz: $t for ${seconds} s"
  # -max_len: safetensors headers and request bodies are small here; 64 KiB keeps every target fast.
  seed_arg=()
  if [ -n "${FUZZ_SEED:-}" ]; then seed_arg=(-seed="$FUZZ_SEED"); fi
  # Targets that read JSON numbers get the boundary values (INT_MAX, 2^31, 2^53, -0, 1e308, ...).
  dict_arg=()
  case "$t" in
    fuzz_openai_request | fuzz_http_request | fuzz_json | fuzz_model_config)
      dict_arg=(-dict=tests/fuzz/dict/boundary_numbers.dict) ;;
  esac
  if "$bin" "$work" "$seeds" "${seed_arg[@]}" "${dict_arg[@]}" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t ok: $execs executions, $cov, seed $(seed_of "$log")"
    summary+="$t: ok, $execs executions, $cov"$'\n'
  else
    status=1
    echo "fuzz: $t FAILED (seed $(seed_of "$log")); the last lines of $log:" >&2
    tail -n 60 "$log" >&2
    summary+="$t: FAILED (inputs in $art)"$'\n'
  fi
done
echo "fuzz: summary ($(($(date +%s) - t0)) s in all)"
printf '%s' "$summary"
exit $status
