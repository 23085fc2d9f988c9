#!/usr/bin/env bash
# Builds the operator image (images/operator/Dockerfile) and loads it into the local cluster's containerd.
#
#   hack/build-operator-image.sh [COMMAND] [--force]
#
# COMMAND:
#   all      (default) build if needed, import into containerd when it is running
#   build    build only (no containerd needed): a docker-archive tarball in $IMAGE_CACHE
#   import   build if needed, then import; fails when containerd is not running
#   archive  print the path of the image's cached archive (building it if needed), e.g. for `kind load`
#   ref      print the image reference and exit
# --force rebuilds even when a cached archive with the same inputs exists.
#
# The wheels are built on the host with `pip wheel` (the only step that may reach the package index; its
# result is cached by the inputs that decide it) and installed in the image with `pip install --no-index`.
# The wheels of compiled dependencies (pydantic-core, PyYAML, ...) must match the image's Python (3.11): with a
# host Python 3.11 (.venv's, python3.11 or python3; OPERATOR_IMAGE_PYTHON picks one) `pip wheel` builds them,
# with another version `pip download` fetches the published 3.11 binary wheels instead.
# With buildah (preferred) the image is built FROM the project's base image (hack/build-images.sh builds it);
# with docker FROM the official python:3.11-slim-bookworm. Cached like the other images: a second run with the
# same inputs builds nothing.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/image-lib.sh
source "$HACK_DIR/image-lib.sh"

# = constants.OPERATOR_IMAGE (a unit test checks).
OPERATOR_IMAGE_VERSION="$SANDBOX_IMAGE_VERSION"
OPERATOR_IMAGE="$IMAGE_PREFIX/operator:$OPERATOR_IMAGE_VERSION"
BASE_PYTHON_MINOR="3.11"   # Debian bookworm's python3, and the docker default python:3.11-slim-bookworm
DOCKERFILE="$REPO_ROOT/images/operator/Dockerfile"
WHEEL_CACHE="$CACHE_ROOT/wheels"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

cmd="all"
force=""
for arg in "$@"; do
  case "$arg" in
    all|build|import|archive|ref) cmd="$arg" ;;
    --force) force=1 ;;
    -h|--help) usage 0 ;;
    *) log "unknown argument: $arg"; usage ;;
  esac
done
if [ "$cmd" = ref ]; then
  echo "$OPERATOR_IMAGE"
  exit 0
fi

# --- the host Python that builds the wheels -------------------------------------------------------------------
# minor_of PYTHON: prints its X.Y.
minor_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# A Python with pip, preferably of the image's minor version (then `pip wheel` builds exactly the wheels the image
# needs). OPERATOR_IMAGE_PYTHON wins.
pick_python() {
  local candidate fallback=""
  for candidate in "${OPERATOR_IMAGE_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" "python$BASE_PYTHON_MINOR" python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    "$candidate" -m pip --version >/dev/null 2>&1 || continue
    if [ -n "${OPERATOR_IMAGE_PYTHON:-}" ] || [ "$(minor_of "$candidate")" = "$BASE_PYTHON_MINOR" ]; then
      command -v "$candidate"
      return 0
    fi
    [ -n "$fallback" ] || fallback="$(command -v "$candidate")"
  done
  [ -n "$fallback" ] || die "no Python with pip on this machine (set OPERATOR_IMAGE_PYTHON)"
  echo "$fallback"
}

# Sources of the sandbox_operator package, in a stable order.
package_files() {
  (cd "$REPO_ROOT" && find operator/sandbox_operator -type f \( -name '*.py' -o -name py.typed \) \
    -not -path '*/__pycache__/*' | LC_ALL=C sort)
}

mkdir -p "$IMAGE_CACHE" "$WHEEL_CACHE"
ENGINE="$(image_engine)"
PYTHON="$(pick_python)"
PY_TAG="$("$PYTHON" -c 'import platform, sys; print("%s-%d.%d-%s" % (sys.implementation.name, *sys.version_info[:2], platform.machine()))')"

# The operator's runtime requirements, one a line (sorted, so the cache key ignores their order in the file): the
# base dependencies of pyproject.toml (the client's) and those of its `operator` extra.
REQUIREMENTS="$("$PYTHON" -c 'import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(sorted([*project["dependencies"], *project["optional-dependencies"]["operator"]], key=str.lower)))' \
  "$REPO_ROOT/pyproject.toml")"
# The dependencies' wheels depend on those and the interpreter (not on dev tools); the image on the sources too.
DEPS_KEY="$(printf '%s\n%s\n' "$REQUIREMENTS" "$PY_TAG" | sha256sum | cut -c1-16)"
DEPS_DIR="$WHEEL_CACHE/operator-deps-$DEPS_KEY"
mapfile -t SOURCES < <(package_files | sed "s|^|$REPO_ROOT/|")

BASE_ARGS=()
BASE_DEP="python:$BASE_PYTHON_MINOR-slim-bookworm"
BASE_ARCHIVE=""
BASE_KEY=""
if [ "$ENGINE" = buildah ]; then
  # Builds the base image first if it is missing (hack/build-images.sh takes the build lock itself, so before
  # this script takes it). Its inputs key is part of its archive's name: base-VERSION-KEY.docker.tar.
  BASE_ARCHIVE="$(bash "$HACK_DIR/build-images.sh" archive base | tail -n 1)"
  [ -s "$BASE_ARCHIVE" ] || die "hack/build-images.sh did not build the base image"
  BASE_KEY="$(basename "$BASE_ARCHIVE" .docker.tar)"
  BASE_KEY="${BASE_KEY##*-}"
  BASE_DEP="$BASE_IMAGE $BASE_KEY"
  BASE_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
KEY="$(EXTRA_KEY_INPUT="$ENGINE $BASE_DEP $DEPS_KEY" inputs_key "$DOCKERFILE" "$REPO_ROOT/pyproject.toml" "${SOURCES[@]}")"
ARCHIVE="$IMAGE_CACHE/operator-$OPERATOR_IMAGE_VERSION-$KEY.docker.tar"

# One image build at a time on this machine (shared with hack/build-images.sh).
exec 9>"$IMAGE_CACHE/.build.lock"
flock 9

# --- wheels ---------------------------------------------------------------------------------------------------
build_deps_wheels() {
  [ -f "$DEPS_DIR/.complete" ] && [ -z "$force" ] && return 0
  log "wheels: building the dependencies' wheels with $PYTHON ($PY_TAG) into $DEPS_DIR"
  rm -rf "$DEPS_DIR.partial"
  mkdir -p "$DEPS_DIR.partial"
  # The operator's runtime dependencies (from pyproject.toml), pip (run from its wheel inside the image) and the
  # build backend (so that the project's own wheel is then built with --no-index).
  printf '%s\n' "$REQUIREMENTS" >"$DEPS_DIR.partial/requirements.txt"
  if [ "$(minor_of "$PYTHON")" = "$BASE_PYTHON_MINOR" ]; then
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$DEPS_DIR.partial" \
      -r "$DEPS_DIR.partial/requirements.txt" pip "setuptools>=69" wheel >&2
  else
    # Another host Python: fetch the published binary wheels for the image's Python and platform instead.
    local arch abi="cp${BASE_PYTHON_MINOR/./}"
    arch="$(uname -m)"
    log "wheels: host Python $(minor_of "$PYTHON") is not the image's $BASE_PYTHON_MINOR: downloading its binary wheels"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$DEPS_DIR.partial" \
      --only-binary=:all: --implementation cp --python-version "$BASE_PYTHON_MINOR" \
      --abi "$abi" --abi abi3 --abi none --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
      --platform "manylinux2014_$arch" --platform "manylinux_2_5_$arch" --platform "manylinux1_$arch" \
      --platform any -r "$DEPS_DIR.partial/requirements.txt" pip "setuptools>=69" wheel >&2
  fi
  touch "$DEPS_DIR.partial/.complete"
  rm -rf "$DEPS_DIR"
  mv "$DEPS_DIR.partial" "$DEPS_DIR"
  # Older wheel sets only take space.
  find "$WHEEL_CACHE" -maxdepth 1 -name 'operator-deps-*' -not -name "operator-deps-$DEPS_KEY" \
    -exec rm -rf {} + 2>/dev/null || true
}

# make_context DIR: the build context: DIR/wheels with every wheel, the project's built from this checkout.
make_context() {
  local ctx="$1" src
  mkdir -p "$ctx/wheels" "$ctx/src"
  cp "$DEPS_DIR"/*.whl "$ctx/wheels/"
  # Build from a clean copy of the sources (no egg-info, build/ or caches from the working tree).
  src="$ctx/src"
  cp "$REPO_ROOT/pyproject.toml" "$src/"
  [ -f "$REPO_ROOT/README.md" ] && cp "$REPO_ROOT/README.md" "$src/"
  [ -f "$REPO_ROOT/LICENSE" ] && cp "$REPO_ROOT/LICENSE" "$src/"
  (cd "$REPO_ROOT" && package_files | while read -r f; do install -D -m 0644 "$f" "$src/$f"; done)
  # (setuptools' deprecation chatter goes to a log that is shown only when the build fails)
  if ! "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-index --find-links "$DEPS_DIR" --no-deps \
      --wheel-dir "$ctx/wheels" "$src" >"$ctx/wheel.log" 2>&1; then
    cat "$ctx/wheel.log" >&2
    return 1
  fi
  rm -rf "$src"
  ls "$ctx/wheels"/sandbox_operator-*.whl >/dev/null
}

build_image() {
  local ctx rc=0
  build_deps_wheels
  if [ "$ENGINE" = buildah ]; then
    image_load_storage buildah "$BASE_IMAGE" "$BASE_KEY" "$BASE_ARCHIVE"
  fi
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/operator-image.XXXXXX")"
  make_context "$ctx" || rc=$?
  if [ "$rc" = 0 ]; then
    image_bud "$ENGINE" "$OPERATOR_IMAGE" "$KEY" "$ctx" -f "$DOCKERFILE" "${BASE_ARGS[@]}" \
      --label "org.opencontainers.image.title=sandbox-operator operator" \
      --label "org.opencontainers.image.version=$OPERATOR_IMAGE_VERSION" || rc=$?
  fi
  rm -rf "$ctx"
  return "$rc"
}

ensure_image() {
  local start f
  if [ -s "$ARCHIVE" ] && [ -z "$force" ]; then
    log "operator: up to date ($(basename "$ARCHIVE"))"
    return 0
  fi
  start=$(date +%s)
  log "operator: building $OPERATOR_IMAGE with $ENGINE (inputs $KEY)"
  build_image
  image_save "$ENGINE" "$OPERATOR_IMAGE" "$ARCHIVE"
  for f in "$IMAGE_CACHE"/operator-*.docker.tar; do
    [ "$f" = "$ARCHIVE" ] || rm -f "$f"
  done
  log "operator: built in $(( $(date +%s) - start ))s -> $ARCHIVE"
}

ensure_image
case "$cmd" in
  build) ;;
  archive) echo "$ARCHIVE" ;;
  all|import)
    if containerd_running; then
      image_import "$OPERATOR_IMAGE" "$KEY" "$ARCHIVE"
    elif [ "$cmd" = import ]; then
      die "containerd is not running on $CONTAINERD_SOCK"
    else
      log "containerd is not running: image not imported (run '$0 import' once it is)"
    fi
    ;;
esac
exit 0
