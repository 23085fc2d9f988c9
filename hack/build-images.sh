#!/usr/bin/env bash
# Builds the project's images offline and loads them into the local cluster's containerd.
#
#   hack/build-images.sh [COMMAND] [--force] [IMAGE...]
#
# IMAGE is pause, base, sandbox or data (default: all four; building sandbox with buildah also builds base, which
# it uses). COMMAND:
#   all      (default) build, import into containerd when it is running, print the sandbox images' sizes
#   build    build only (no containerd needed): docker-archive tarballs in $IMAGE_CACHE
#   import   build if needed, then import; fails when containerd is not running
#   size     print the uncompressed size of each (built) image
#   archive  print the path of each image's cached archive (building it if needed)
# --force rebuilds even when a cached archive with the same inputs exists.
#
# With buildah (preferred; installed from Debian when neither engine is present): base = debootstrap minbase of
# this machine's Debian mirror + python3, stripped; pause = images/pause/pause.c built static; sandbox =
# images/sandbox/Dockerfile FROM base, with images/sandbox/init/sandbox-init.c built static into its build
# context; data = the same Dockerfile FROM a root filesystem of its own: base's packages + numpy, pandas and
# matplotlib from Debian. With docker (for users who have it): only pause and sandbox, the sandbox from the
# official slim Python image (the Dockerfile default).
# Every image is cached by version and by a hash of its inputs: a second run builds nothing.
# shellcheck disable=SC2317  # the build_* functions are called indirectly
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/image-lib.sh
source "$HACK_DIR/image-lib.sh"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

cmd="all"
force=""
images=()
for arg in "$@"; do
  case "$arg" in
    all|build|import|size|archive) cmd="$arg" ;;
    --force) force=1 ;;
    pause|base|sandbox|data) images+=("$arg") ;;
    -h|--help) usage 0 ;;
    *) log "unknown argument: $arg"; usage ;;
  esac
done
[ "${#images[@]}" -gt 0 ] || images=(pause base sandbox data)

mkdir -p "$IMAGE_CACHE"
exec 9>"$IMAGE_CACHE/.build.lock"
flock 9   # one build at a time (cluster-up and `make image` may overlap)

ENGINE="$(image_engine)"

image_ref() {
  case "$1" in
    pause) echo "$PAUSE_IMAGE" ;;
    base) echo "$BASE_IMAGE" ;;
    sandbox) echo "$SANDBOX_IMAGE" ;;
    data) echo "$SANDBOX_DATA_IMAGE" ;;
  esac
}

# --- input keys: what each image is built from --------------------------------------------------------------
PAUSE_CFLAGS=(-Os -Wall -Wextra -Werror -static "-DVERSION=\"$PAUSE_VERSION\"")
INIT_CFLAGS=(-Os -Wall -Wextra -Werror -static "-DVERSION=\"$SANDBOX_IMAGE_VERSION\"")
# The base image's buildah config; part of its key.
BASE_CONFIG=(--env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" --env LANG=C.UTF-8
             --cmd /bin/bash --label "org.opencontainers.image.title=sandbox-operator base"
             --label "org.opencontainers.image.version=$BASE_IMAGE_VERSION")
# The data image's root filesystem: base's packages plus these (with their dependencies, not recommendations).
# python3-munkres and python3-unicodedata2 are the small alternatives of two dependencies of python3-fonttools (which
# matplotlib needs): without them apt takes the first ones, python3-scipy, which brings pythran, g++ and the boost
# headers (~500 MB more), and python3-all.
DATA_PACKAGES="python3-numpy,python3-pandas,python3-matplotlib,python3-munkres,python3-unicodedata2"
# Its buildah config; part of its key. Debian's matplotlibrc asks for TkAgg, which needs a display: Agg draws
# without one. matplotlib keeps its font list and config in MPLCONFIGDIR, which must be writable (the root file
# system is read-only): /tmp.
DATA_BASE_CONFIG=("${BASE_CONFIG[@]}" --env MPLBACKEND=Agg --env MPLCONFIGDIR=/tmp/matplotlib)
# The data root filesystem as an image, FROM which the sandbox Dockerfile builds the data image; it lives only in
# buildah's storage (rebuilt there from the cached root filesystem when missing).
DATA_BASE_IMAGE="$BASE_IMAGE-data"

declare -A KEY=()
key_of() {
  local name="$1"
  if [ -z "${KEY[$name]:-}" ]; then
    case "$name" in
      pause)
        KEY[pause]="$(EXTRA_KEY_INPUT="$ENGINE ${PAUSE_CFLAGS[*]}" \
          inputs_key "$REPO_ROOT/images/pause/pause.c" "$REPO_ROOT/images/pause/Dockerfile")" ;;
      base)
        KEY[base]="$(EXTRA_KEY_INPUT="$ENGINE $DEBIAN_SUITE $BASE_IMAGE_VERSION ${BASE_CONFIG[*]}" \
          inputs_key "$REPO_ROOT/images/base/mkrootfs.sh")" ;;
      data-base)
        KEY[data-base]="$(EXTRA_KEY_INPUT="$ENGINE $DEBIAN_SUITE $BASE_IMAGE_VERSION $DATA_PACKAGES \
          ${DATA_BASE_CONFIG[*]}" inputs_key "$REPO_ROOT/images/base/mkrootfs.sh")" ;;
      sandbox)
        local deps="defaults"
        [ "$ENGINE" = buildah ] && deps="$(key_of base)"
        KEY[sandbox]="$(sandbox_build_key "$deps")" ;;
      data) KEY[data]="$(sandbox_build_key "$(key_of data-base)")" ;;
    esac
  fi
  echo "${KEY[$name]}"
}

# sandbox_build_key FROM_KEY: the key of images/sandbox/Dockerfile built FROM the image whose key is FROM_KEY:
# every file of the build context (Dockerfile, tools, sandbox-init's source) and sandbox-init's compiler flags.
sandbox_build_key() {
  local sources
  mapfile -t sources < <(find "$REPO_ROOT/images/sandbox" -type f | LC_ALL=C sort)
  EXTRA_KEY_INPUT="$ENGINE $1 ${INIT_CFLAGS[*]}" inputs_key "${sources[@]}"
}

version_of() {
  case "$1" in
    pause) echo "$PAUSE_VERSION" ;;
    base) echo "$BASE_IMAGE_VERSION" ;;
    sandbox|data) echo "$SANDBOX_IMAGE_VERSION" ;;
  esac
}

archive_of() { echo "$IMAGE_CACHE/$1-$(version_of "$1")-$(key_of "$1").docker.tar"; }

# The key of the root filesystem an image is made of: base's is its own; data's, its data-base's; none for the
# others.
rootfs_key_of() {
  case "$1" in
    base) key_of base ;;
    data) key_of data-base ;;
  esac
}

# rootfs_of NAME: the cached root filesystem tar of base or data.
rootfs_of() { echo "$IMAGE_CACHE/rootfs/$1-$BASE_IMAGE_VERSION-$(rootfs_key_of "$1").tar"; }

# Older archives and root filesystems of the same image (other inputs) only take space. ($IMAGE_CACHE/*.tar are
# image archives only: the root filesystem tars of base and data live in $IMAGE_CACHE/rootfs.)
prune_old() {
  local name="$1" key rootfs_key f
  key="$(key_of "$name")"
  rootfs_key="$(rootfs_key_of "$name")"
  for f in "$IMAGE_CACHE/$name"-*.docker.tar; do
    [ -e "$f" ] || continue
    case "$f" in *"-$key."*) ;; *) rm -f "$f" ;; esac
  done
  for f in "$IMAGE_CACHE/rootfs/$name"-*.tar; do
    [ -e "$f" ] || continue
    case "$f" in *"-$rootfs_key."*) ;; *) rm -f "$f" ;; esac
  done
}

# --- builds (called as "build_$name") -------------------------------------------------------------------------
# compile_static SOURCE OUTPUT CFLAGS...: a stripped static binary (installs gcc and the static libc if needed).
compile_static() {
  local source="$1" output="$2"
  shift 2
  need_command gcc gcc
  if ! gcc "$@" -o "$output" "$source" 2>"$output.gcc.log"; then
    cat "$output.gcc.log" >&2
    apt_install libc6-dev   # the static C library
    gcc "$@" -o "$output" "$source"
  fi
  rm -f "$output.gcc.log"
  strip "$output"
}

build_pause() {
  local ctx rc=0
  ctx="$(mktemp -d)"
  compile_static "$REPO_ROOT/images/pause/pause.c" "$ctx/pause" "${PAUSE_CFLAGS[@]}"
  image_bud "$ENGINE" "$PAUSE_IMAGE" "$(key_of pause)" "$ctx" -f "$REPO_ROOT/images/pause/Dockerfile" || rc=$?
  rm -rf "$ctx"
  return "$rc"
}

# rootfs_image NAME REF KEY EXTRA_PACKAGES CONFIG...: NAME's root filesystem (debootstrap of this machine's Debian
# mirror, cached in $IMAGE_CACHE/rootfs) committed as REF with the buildah CONFIG, labelled with KEY.
rootfs_image() {
  local name="$1" ref="$2" key="$3" packages="$4" rootfs mirror ctr start
  shift 4
  [ "$ENGINE" = buildah ] \
    || die "the $name image is built with buildah (debootstrap); docker users build FROM the official slim image"
  [ "$(id -u)" = 0 ] || die "building the $name image needs root (debootstrap)"
  need_command debootstrap debootstrap
  mkdir -p "$IMAGE_CACHE/rootfs"
  rootfs="$(rootfs_of "$name")"
  if [ ! -s "$rootfs" ] || [ -n "$force" ]; then
    mirror="$(debian_mirror "$DEBIAN_SUITE")"
    log "$name: debootstrap $DEBIAN_SUITE${packages:+ + $packages} from $mirror"
    start=$(date +%s)
    bash "$REPO_ROOT/images/base/mkrootfs.sh" "$rootfs" "$DEBIAN_SUITE" "$mirror" \
      "$IMAGE_CACHE/debootstrap-debs-$DEBIAN_SUITE" "$packages"
    log "$name: root filesystem built in $(( $(date +%s) - start ))s"
  fi
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$rootfs" / >/dev/null
  buildah config "$@" --label "$INPUTS_LABEL=$key" "$ctr"
  buildah commit --quiet --rm --format docker "$ctr" "$ref" >/dev/null
}

build_base() { rootfs_image base "$BASE_IMAGE" "$(key_of base)" "" "${BASE_CONFIG[@]}"; }

# sandbox_bud REF KEY TITLE [BUILD FLAGS...]: images/sandbox/Dockerfile, with the compiled PID 1 in its build context
# (init/sandbox-init, which the Dockerfile copies).
sandbox_bud() {
  local ref="$1" key="$2" title="$3" ctx rc=0
  shift 3
  ctx="$(mktemp -d)"
  cp -a "$REPO_ROOT/images/sandbox/." "$ctx/"
  compile_static "$ctx/init/sandbox-init.c" "$ctx/init/sandbox-init" "${INIT_CFLAGS[@]}"
  image_bud "$ENGINE" "$ref" "$key" "$ctx" "$@" --label "org.opencontainers.image.title=$title" \
    --label "org.opencontainers.image.version=$SANDBOX_IMAGE_VERSION" || rc=$?
  rm -rf "$ctx"
  return "$rc"
}

build_sandbox() {
  local args=()
  if [ "$ENGINE" = buildah ]; then
    ensure base
    image_load_storage "$ENGINE" "$BASE_IMAGE" "$(key_of base)" "$(archive_of base)"
    args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  fi
  sandbox_bud "$SANDBOX_IMAGE" "$(key_of sandbox)" "sandbox-operator sandbox" "${args[@]}"
}

# The sandbox image's Dockerfile on the data root filesystem: the same tools, user and hardening.
build_data() {
  if [ "$(image_storage_key "$ENGINE" "$DATA_BASE_IMAGE")" != "$(key_of data-base)" ] || [ -n "$force" ]; then
    rootfs_image data "$DATA_BASE_IMAGE" "$(key_of data-base)" "$DATA_PACKAGES" "${DATA_BASE_CONFIG[@]}"
  fi
  sandbox_bud "$SANDBOX_DATA_IMAGE" "$(key_of data)" "sandbox-operator sandbox with numpy, pandas, matplotlib" \
    --build-arg "BASE_IMAGE=$DATA_BASE_IMAGE"
}

declare -A ENSURED=()
# ensure NAME: the image's archive exists in the cache for its current inputs (built if not).
ensure() {
  local name="$1" archive start
  [ -n "${ENSURED[$name]:-}" ] && return 0
  archive="$(archive_of "$name")"
  if [ -s "$archive" ] && [ -z "$force" ]; then
    log "$name: up to date ($(basename "$archive"))"
  else
    if [ "$ENGINE" = docker ] && { [ "$name" = base ] || [ "$name" = data ]; }; then
      log "$name: skipped with docker (debootstrap's root filesystem; Dockerfiles default to the official slim image)"
      ENSURED[$name]=skipped
      return 0
    fi
    start=$(date +%s)
    log "$name: building $(image_ref "$name") with $ENGINE (inputs $(key_of "$name"))"
    "build_$name"
    image_save "$ENGINE" "$(image_ref "$name")" "$archive"
    prune_old "$name"
    log "$name: built in $(( $(date +%s) - start ))s -> $archive"
  fi
  ENSURED[$name]=1
}

print_size() {
  local name="$1" archive bytes
  archive="$(archive_of "$name")"
  [ -s "$archive" ] || { log "$name: not built"; return 0; }
  bytes="$(image_size "$archive")"
  awk -v ref="$(image_ref "$name")" -v b="$bytes" \
    'BEGIN { printf "%s: %.1f MB uncompressed (%d bytes)\n", ref, b / 1e6, b }'
}

import_all() {
  local name
  if ! containerd_running; then
    [ "$cmd" = import ] && die "containerd is not running on $CONTAINERD_SOCK"
    log "containerd is not running: images not imported (run 'hack/build-images.sh import' once it is)"
    return 0
  fi
  for name in "${images[@]}"; do
    [ "${ENSURED[$name]:-}" = skipped ] && continue
    image_import "$(image_ref "$name")" "$(key_of "$name")" "$(archive_of "$name")"
  done
}

for name in "${images[@]}"; do
  case "$cmd" in
    size) ;;
    *) ensure "$name" ;;
  esac
done

case "$cmd" in
  build) ;;
  all) import_all ;;
  import) import_all ;;
  archive) for name in "${images[@]}"; do archive_of "$name"; done ;;
  size) for name in "${images[@]}"; do print_size "$name"; done ;;
esac
if [ "$cmd" = all ] || [ "$cmd" = build ] || [ "$cmd" = import ]; then
  for name in "${images[@]}"; do
    case "$name" in sandbox|data) print_size "$name" ;; esac
  done
fi
exit 0
