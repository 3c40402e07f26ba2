#!/usr/bin/env bash
# Builds uniattn-serve for a container image and stages what the runtime image needs. The Dockerfiles'
# builder stages run exactly this; CI runs the staging half on its own build (tests/deploy, label deploy).
#
#   scripts/build-in-image.sh DEST            build with scripts/setup.sh, then stage into DEST
#   scripts/build-in-image.sh --stage-only DEST   stage from an existing build (UNIATTN_BUILD_DIR)
#
# The build is scripts/setup.sh (its apt step installs the build dependencies, unless UNIATTN_SKIP_APT=1),
# with the tests off, the server required, and without fetching the default model (an init container
# does that at deploy time). Extra CMake arguments (e.g. -DUNIATTN_CUDA=ON) come from UNIATTN_CMAKE_ARGS.
#
# DEST receives:
#   bin/uniattn-serve bin/uniattn-convert bin/uniattn-generate
#   scripts/fetch_model.sh                 (the init step: fetch_model.sh DEST/bin/uniattn-convert)
#   runtime-packages.txt                   Debian/Ubuntu packages that provide every shared library the
#                                          binaries load, one a line (the runtime stage apt-installs them)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

stage_only=0
if [ "${1:-}" = --stage-only ]; then
  stage_only=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--stage-only] DEST" >&2
  exit 2
fi
dest=$1
build="${UNIATTN_BUILD_DIR:-build}"
binaries=(uniattn-serve uniattn-convert uniattn-generate)

if [ "$stage_only" = 0 ]; then
  UNIATTN_BUILD_DIR="$build" UNIATTN_SKIP_MODEL=1 UNIATTN_APT_PROFILE=build \
    UNIATTN_CMAKE_ARGS="-DUNIATTN_TESTS=OFF -DUNIATTN_SERVER=ON ${UNIATTN_CMAKE_ARGS:-}" \
    scripts/setup.sh
fi

for b in "${binaries[@]}"; do
  if [ ! -x "$build/bin/$b" ]; then
    echo "build-in-image: $build/bin/$b is missing (is the server's build enabled? see scripts/setup.sh)" >&2
    exit 1
  fi
done

mkdir -p "$dest/bin" "$dest/scripts"
for b in "${binaries[@]}"; do
  install -m 0755 "$build/bin/$b" "$dest/bin/$b"
done
install -m 0755 scripts/fetch_model.sh "$dest/scripts/fetch_model.sh"

# Shared libraries -> the packages that own them. ldd lists what the dynamic loader resolves here; the
# runtime stage has the same distribution release as the builder, so the same package names exist there.
# The driver's libraries (libcuda, libnvidia-*) are not packages of the image: the NVIDIA container
# runtime mounts them from the host, so they are skipped even when ldd cannot find them here.
# Each library is looked up under the path ldd gives, its real path, and their usrmerge twins (dpkg may
# have recorded /lib/... for a file ldd reports under /usr/lib/..., or the reverse).
declare -A lib_paths=()  # "binary: soname" -> candidate paths, space-separated
missing=()
for b in "${binaries[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    case "$name" in
      libcuda.so* | libnvidia-* | linux-vdso.so*) continue ;;
    esac
    if [ "$path" = "not" ]; then
      missing+=("$b: $name")
      continue
    fi
    # The CUDA toolkit's own libraries (cudart, cuBLAS) come with the nvidia/cuda runtime base image, and a
    # toolkit installed by NVIDIA's runfile (as on CI machines) belongs to no package either.
    case "$path" in
      /usr/local/cuda*) continue ;;
    esac
    candidates=("$path" "$(readlink -f "$path")")
    for c in "${candidates[@]:0:2}"; do
      case "$c" in
        /usr/lib/*) candidates+=("${c#/usr}") ;;
        /lib/*) candidates+=("/usr$c") ;;
      esac
    done
    lib_paths["$b: $name ($path)"]="${candidates[*]}"
  done < <(ldd "$build/bin/$b")
done
# Owners from dpkg's file lists in one pass (what dpkg-query -S reads, without its per-pattern scan).
declare -A owner=()
all_paths=$(printf '%s\n' "${lib_paths[@]}" | tr ' ' '\n' | sort -u)
while IFS= read -r line; do
  # /var/lib/dpkg/info/PKG[:ARCH].list:/path
  list=${line%%.list:*}
  pkg=${list##*/}
  owner["${line#*.list:}"]=${pkg%%:*}
done < <(grep -H -x -F -f <(printf '%s\n' "$all_paths") /var/lib/dpkg/info/*.list || true)
packages=()
for key in "${!lib_paths[@]}"; do
  pkg=""
  for c in ${lib_paths[$key]}; do
    if [ -n "${owner[$c]:-}" ]; then
      pkg=${owner[$c]}
      break
    fi
  done
  if [ -n "$pkg" ]; then
    packages+=("$pkg")
  else
    missing+=("$key belongs to no package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'build-in-image: cannot map these libraries to packages:\n' >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
printf '%s\n' "${packages[@]}" | sort -u > "$dest/runtime-packages.txt"
echo "build-in-image: staged ${binaries[*]} in $dest ($(wc -l < "$dest/runtime-packages.txt") runtime packages)"
