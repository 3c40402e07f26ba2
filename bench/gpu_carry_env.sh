# Sourced on the GPU machine by bench/gpu_sampling_check.sh (run) and bench/gpu_decode_ab.sh: unpacks the
# binaries that `bench/gpu_sampling_check.sh prepare` packed here, points the loader at the libraries packed
# with them, links stories15M and /work/main where the tests look for them, and opens $OUT/summary.txt.
# Sets C (the carry folder), B (its bin/), OUT, T0, S and say().
C=build-cuda/carry
OUT=${OUT:-/tmp/uniattn-out}
mkdir -p "$OUT"
T0=$(date +%s)
S="$OUT/summary.txt"
say() { echo "$*" | tee -a "$S"; }
(cd "$C" && tar xJf bins.tar.xz)
export LD_LIBRARY_PATH=$PWD/$C/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# The tests find stories15M under the source directory they were built in (/work/main).
mkdir -p /work models
[ -e /work/main ] || ln -s "$PWD" /work/main
[ -e models/stories15M ] || ln -s "$PWD/$C/stories15M" models/stories15M
B=$C/bin
say "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
