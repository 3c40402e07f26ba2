#!/usr/bin/env bash
# Builds the container images from the repository root (needs a Docker engine, or BuildKit via buildx).
#   scripts/docker-build.sh [cpu|cuda|all]        default: all
# Environment:
#   UNIATTN_IMAGE       image name (default: uniattn-serve); tags are <version>-cpu and <version>-cuda
#   UNIATTN_VERSION     version part of the tags (default: the CMake project version)
#   UNIATTN_PUSH=1      push after building
#   DOCKER_BUILD_ARGS   extra arguments for docker build, e.g. "--build-arg CUDA_ARCHITECTURES=90a;100a"
# The builder stages run scripts/build-in-image.sh, which runs scripts/setup.sh: the same build as CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
which=${1:-all}
image=${UNIATTN_IMAGE:-uniattn-serve}
version=${UNIATTN_VERSION:-$(sed -n 's/^project(uniattn_serve VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)}
case "$which" in
  cpu) flavors=(cpu) ;;
  cuda) flavors=(cuda) ;;
  all) flavors=(cpu cuda) ;;
  *)
    echo "usage: $0 [cpu|cuda|all]" >&2
    exit 2
    ;;
esac
for f in "${flavors[@]}"; do
  tag="$image:$version-$f"
  echo "docker-build: $tag from docker/Dockerfile.$f"
  # shellcheck disable=SC2086
  docker build -f "docker/Dockerfile.$f" -t "$tag" ${DOCKER_BUILD_ARGS:-} .
  if [ "${UNIATTN_PUSH:-0}" = 1 ]; then
    docker push "$tag"
  fi
done
