#!/usr/bin/env bash
# Configures one clang build dir shared by scripts/fuzz.sh (the libFuzzer targets) and scripts/sanitize.sh
# (engine_tests and scheduler_tests under ASan+UBSan), so CI compiles the engine with sanitizers once, not
# twice: AddressSanitizer + UndefinedBehaviorSanitizer (UB fatal) and -fsanitize=fuzzer-no-link (coverage
# instrumentation, harmless to the unit tests) over the whole build; CUDA and the server off.
#   configure-asan.sh DIR     (idempotent; prints the configure log only on failure)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${1:?usage: configure-asan.sh BUILD_DIR}"
cxx=$(command -v clang++ || command -v clang++-14 || true)
cc=$(command -v clang || command -v clang-14 || true)
if [ -z "$cxx" ] || [ -z "$cc" ]; then
  echo "configure-asan: clang is required (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
launcher=()
if command -v ccache >/dev/null && [ "${UNIATTN_CCACHE:-1}" != 0 ]; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
mkdir -p "$build"
cmake -S "$root" -B "$build" -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" \
  -DUNIATTN_FUZZ=ON -DUNIATTN_TESTS=ON -DUNIATTN_CUDA=OFF -DUNIATTN_SERVER=${UNIATTN_ASAN_SERVER:-AUTO} \
  -DUNIATTN_SANITIZE=address,undefined \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined" \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >"$build/configure.log" 2>&1 || {
  cat "$build/configure.log" >&2
  exit 1
}
