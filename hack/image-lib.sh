# shellcheck shell=bash
# Helpers for building and loading images offline. Source it after hack/lib.sh; do not run it.
#
# Reusable by other image builds (the operator image): image_engine, image_bud, image_save, image_load_storage,
# image_import, image_size, inputs_key, containerd_running.
set -euo pipefail

# Label carrying the hash of an image's inputs, on the image in buildah's storage and in containerd.
INPUTS_LABEL="io.sandbox-operator.inputs"

_apt_updated=""
# apt_install PACKAGE...: installs Debian packages (without recommends) if apt-get is there.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "need $*: install them (no apt-get on this machine)"
  [ "$(id -u)" = 0 ] || die "need $*: run as root or install them first"
  if [ -z "$_apt_updated" ]; then
    log "apt-get update"
    apt-get -qq -o DPkg::Lock::Timeout=600 update >&2
    _apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "$@" >&2
}

# need_command COMMAND PACKAGE: makes sure COMMAND exists, installing PACKAGE if not.
need_command() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 is still missing after installing $2"
}

# image_engine: prints "buildah" or "docker". SANDBOX_IMAGE_ENGINE overrides; buildah wins when both exist
# (it needs no daemon); a docker CLI without a reachable daemon does not count; with neither, buildah is
# installed from Debian.
image_engine() {
  if [ -n "${SANDBOX_IMAGE_ENGINE:-}" ]; then
    echo "$SANDBOX_IMAGE_ENGINE"
  elif command -v buildah >/dev/null 2>&1; then
    echo buildah
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  else
    apt_install buildah
    echo buildah
  fi
}

# buildah runs here as root without a daemon. chroot isolation needs no OCI runtime and no network namespace
# setup; `--pull=never` keeps every FROM local (no registry is ever contacted).
BUILDAH_BUD_FLAGS=(--isolation chroot --pull=never --layers --format docker)

# inputs_key FILE...: a short hash of the files' names and contents (plus $EXTRA_KEY_INPUT if set).
inputs_key() {
  {
    local f
    for f in "$@"; do
      printf '%s\0' "${f#"$REPO_ROOT"/}"
      sha256sum <"$f"
    done
    printf '%s' "${EXTRA_KEY_INPUT:-}"
  } | sha256sum | cut -c1-16
}

# image_bud ENGINE REF KEY CONTEXT [BUILD FLAGS...]: builds a Dockerfile (give -f FILE among the flags if it is
# not CONTEXT/Dockerfile), labelling the image with its inputs key.
image_bud() {
  local engine="$1" ref="$2" key="$3" context="$4"
  shift 4
  case "$engine" in
    buildah) buildah bud "${BUILDAH_BUD_FLAGS[@]}" --label "$INPUTS_LABEL=$key" -t "$ref" "$@" "$context" >&2 ;;
    docker) docker build --label "$INPUTS_LABEL=$key" -t "$ref" "$@" "$context" >&2 ;;
    *) die "unknown image engine $engine" ;;
  esac
}

# image_save ENGINE REF ARCHIVE: writes a docker-archive (docker save format, uncompressed layers).
image_save() {
  local engine="$1" ref="$2" archive="$3"
  rm -f "$archive.partial"
  case "$engine" in
    buildah) buildah push --quiet "$ref" "docker-archive:$archive.partial:$ref" >&2 ;;
    docker) docker save -o "$archive.partial" "$ref" ;;
  esac
  mv -f "$archive.partial" "$archive"
}

# image_storage_key ENGINE REF: the inputs key of REF in the engine's local storage (empty if absent).
image_storage_key() {
  local engine="$1" ref="$2"
  case "$engine" in
    buildah) buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$INPUTS_LABEL\"}}" "$ref" \
               2>/dev/null || true ;;
    docker) docker image inspect --format "{{index .Config.Labels \"$INPUTS_LABEL\"}}" "$ref" 2>/dev/null || true ;;
  esac
}

# image_load_storage ENGINE REF KEY ARCHIVE: makes sure the engine's storage holds REF built from KEY (a later
# build uses it in FROM), loading it from the cached archive when not.
image_load_storage() {
  local engine="$1" ref="$2" key="$3" archive="$4"
  [ "$(image_storage_key "$engine" "$ref")" = "$key" ] && return 0
  log "loading $ref into $engine storage from $archive"
  case "$engine" in
    buildah) buildah pull --quiet "docker-archive:$archive" >/dev/null ;;
    docker) docker load -i "$archive" >/dev/null ;;
  esac
  [ "$(image_storage_key "$engine" "$ref")" = "$key" ] || die "$archive did not load as $ref ($key)"
}

# ctr_bin: the ctr matching the cluster's containerd (the Go-built one with SANDBOX_CONTAINERD=2, else Debian's).
ctr_bin() {
  if [ "${SANDBOX_CONTAINERD:-}" = 2 ] && [ -x "${CONTAINERD2_BIN_DIR:-}/ctr" ]; then
    echo "$CONTAINERD2_BIN_DIR/ctr"
  else
    echo ctr
  fi
}

# containerd_running: true when the local cluster's containerd answers on its socket.
containerd_running() {
  local ctr
  ctr="$(ctr_bin)"
  [ -S "$CONTAINERD_SOCK" ] && command -v "$ctr" >/dev/null 2>&1 \
    && "$ctr" --address "$CONTAINERD_SOCK" version >/dev/null 2>&1
}

# image_import REF KEY ARCHIVE: imports the archive into containerd's k8s.io namespace (the one the CRI plugin
# and so the kubelet use) unless REF is already there with the same inputs key.
image_import() {
  local ref="$1" key="$2" archive="$3"
  local ctr_cmd=("$(ctr_bin)" --address "$CONTAINERD_SOCK" -n k8s.io)
  if "${ctr_cmd[@]}" images ls "name==$ref" 2>/dev/null | grep -q "$INPUTS_LABEL=$key"; then
    log "$ref: already in containerd"
    return 0
  fi
  log "$ref: importing into containerd"
  "${ctr_cmd[@]}" images import "$archive" >&2
  "${ctr_cmd[@]}" images label "$ref" "$INPUTS_LABEL=$key" >/dev/null
}

# image_size ARCHIVE: the uncompressed size in bytes of a docker-archive's layers (what `docker images` shows).
image_size() {
  python3 - "$1" <<'EOF'
import json
import sys
import tarfile

with tarfile.open(sys.argv[1]) as archive:
    members = {m.name: m for m in archive.getmembers()}
    manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    print(sum(members[layer].size for layer in manifest[0]["Layers"]))
EOF
}

# debian_mirror: the Debian mirror of this machine's apt configuration (deb822 or one-line format), for SUITE.
debian_mirror() {
  if [ -n "${SANDBOX_DEBIAN_MIRROR:-}" ]; then
    echo "$SANDBOX_DEBIAN_MIRROR"
    return
  fi
  local suite="$1" f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # One stanza per blank-line separated paragraph: take the URIs of a "deb" stanza that lists SUITE.
    uri="$(awk -v suite="$suite" '
      function flush() { if (is_deb && has_suite && uris != "" && !done) { split(uris, u, " "); print u[1]; done = 1 }
                         is_deb = 0; has_suite = 0; uris = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/  { for (i = 2; i <= NF; i++) if ($i == "deb") is_deb = 1 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
      /^URIs:/   { uris = ""; for (i = 2; i <= NF; i++) uris = uris " " $i }
      END { flush() }' "$f")"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk -v suite="$suite" '$1 == "deb" { sub(/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?/, "");
                                             if ($2 == suite) { print $1; exit } }')"
  fi
  [ -n "$uri" ] || die "no Debian mirror for $suite in /etc/apt (set SANDBOX_DEBIAN_MIRROR)"
  echo "$uri"
}
