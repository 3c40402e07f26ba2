#!/usr/bin/env bash
# Runs the unit and integration tests under sanitizers (issue 7):
#   build-asan: engine_tests, scheduler_tests and server_tests under AddressSanitizer +
#               UndefinedBehaviorSanitizer (leak checking on, UB fatal), then the integration suites
#               (tests/integration, node) against an ASan+UBSan uniattn-serve; clang, the build dir
#               scripts/fuzz.sh also uses (scripts/configure-asan.sh). Without the server's dependencies
#               only the engine binaries are built and run.
#   build-tsan: scheduler_tests (the engine thread, request queue and streaming callbacks) under
#               ThreadSanitizer.
# OpenMP: libgomp is not instrumented, so TSan cannot see its synchronisation; the tests run with
# OMP_NUM_THREADS=1 and tests/tsan.supp silences reports whose stack is inside libgomp only.
#   SANITIZE_WHICH   "asan tsan" (default) or one of them
#   SANITIZE_JOBS    build parallelism (default nproc)
#   SANITIZE_INTEGRATION  0: skip the integration suites under ASan
#   SANITIZE_ASAN_DIR the ASan build dir (default build-asan)
#   SANITIZE_FILTER  a gtest filter for the ASan binaries (default: all tests)
#   SANITIZE_TSAN_FILTER  a gtest filter for TSan (default: the tests that exercise threads without long
#                    stories15M generations, which take minutes each under TSan on 2 cores; "*" = all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs="${SANITIZE_JOBS:-$(nproc)}"
which="${SANITIZE_WHICH:-asan tsan}"
gen=$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
filter=(--gtest_filter="${SANITIZE_FILTER:-*}")
# The engine thread against client threads: submit, stream, cancel, drain, destroy with work left,
# queue overflow, observers; concurrent requests with preemption on the small random UniAttn model.
tsan_filter='BlockManagerTest.*:SchedulerTest.*:*SchedulerSim*:*ConcurrentGreedyTest.*uniattn*:EngineTest.Cancel*'
tsan_filter+=':EngineTest.Destructor*:EngineTest.QueueFull*:EngineTest.Observer*'
status=0
t_all=$(date +%s)

configure() {  # dir sanitizers server
  mkdir -p "$1"
  cmake -S . -B "$1" -G "$gen" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUNIATTN_SANITIZE="$2" -DUNIATTN_CUDA=OFF \
    -DUNIATTN_SERVER="$3" -DUNIATTN_TESTS=ON >"$1/configure.log" 2>&1 || {
    cat "$1/configure.log" >&2
    exit 1
  }
}

run() {  # label binary
  local t0 log
  t0=$(date +%s)
  log="$(dirname "$2")/../$(basename "$2").$1.log"
  if "$2" "${filter[@]}" >"$log" 2>&1; then
    echo "sanitize: $1 $(basename "$2"): $(grep -o 'PASSED.*' "$log" | tail -1) in $(($(date +%s) - t0)) s"
  else
    status=1
    echo "sanitize: $1 $(basename "$2") FAILED; the last lines of $log:" >&2
    tail -n 80 "$log" >&2
  fi
}

for w in $which; do
  case $w in
    asan)
      t0=$(date +%s)
      dir="${SANITIZE_ASAN_DIR:-build-asan}"
      scripts/configure-asan.sh "$dir"
      targets=(engine_tests scheduler_tests)
      server=0
      if cmake --build "$dir" --target help 2>/dev/null | grep -q '^uniattn-serve:'; then
        server=1
        targets+=(server_tests uniattn-serve)
      fi
      cmake --build "$dir" --target "${targets[@]}" -j "$jobs"
      echo "sanitize: asan built in $(($(date +%s) - t0)) s"
      export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
      export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
      for t in engine_tests scheduler_tests; do run asan "$dir/bin/$t"; done
      if [ $server = 1 ]; then
        run asan "$dir/bin/server_tests"
        if [ "${SANITIZE_INTEGRATION:-1}" != 0 ] && command -v node >/dev/null &&
          [ -d tests/integration/node_modules ]; then
          # The suites start the ASan+UBSan server; a sanitizer report aborts it, which fails the suite
          # (they check every exit code).
          for suite in tests/integration/*.test.mjs; do
            t1=$(date +%s)
            log="$dir/integration.$(basename "$suite" .test.mjs).log"
            if UNIATTN_SERVE="$root/$dir/bin/uniattn-serve" UNIATTN_SOURCE_DIR="$root" \
              node --test --test-reporter=spec "$suite" >"$log" 2>&1; then
              echo "sanitize: asan integration $(basename "$suite"): ok in $(($(date +%s) - t1)) s"
            else
              status=1
              echo "sanitize: asan integration $(basename "$suite") FAILED; the last lines of $log:" >&2
              tail -n 80 "$log" >&2
            fi
          done
        else
          echo "sanitize: asan integration suites skipped (SANITIZE_INTEGRATION=0, or node / npm clients missing)"
        fi
      else
        echo "sanitize: the server's dependencies are missing; server_tests and integration not run under ASan"
      fi
      ;;
    tsan)
      t0=$(date +%s)
      configure build-tsan thread OFF
      cmake --build build-tsan --target scheduler_tests -j "$jobs"
      echo "sanitize: tsan built in $(($(date +%s) - t0)) s"
      filter=(--gtest_filter="${SANITIZE_TSAN_FILTER:-$tsan_filter}")
      TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp} \
        run tsan build-tsan/bin/scheduler_tests
      ;;
    *)
      echo "sanitize: unknown '$w' (asan, tsan)" >&2
      exit 2
      ;;
  esac
done
echo "sanitize: $([ $status = 0 ] && echo ok || echo FAILED) in $(($(date +%s) - t_all)) s"
exit $status
