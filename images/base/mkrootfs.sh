#!/usr/bin/env bash
# Builds the root filesystem of the base image as a tar: Debian minbase + python3 (+ procps), stripped.
#
#   images/base/mkrootfs.sh OUT.tar SUITE MIRROR [DEB_CACHE_DIR] [EXTRA_PACKAGES]
#
# Runs as root (debootstrap needs it). MIRROR comes from the machine's apt configuration (the caller reads it);
# no hostname is written here. The result is what `buildah add CTR OUT.tar /` turns into an image layer.
# EXTRA_PACKAGES (comma-separated Debian package names; DEB_CACHE_DIR may be "" to pass them without a cache) are
# then installed by apt-get in the new system, from the same mirror, with their dependencies but not their
# recommendations: the data image's root filesystem.
set -euo pipefail

usage="usage: mkrootfs.sh OUT.tar SUITE MIRROR [DEB_CACHE_DIR] [EXTRA_PACKAGES]"
out="${1:?$usage}"
suite="${2:?$usage}"
mirror="${3:?$usage}"
deb_cache="${4:-}"
extra_packages="${5:-}"

# Packages on top of minbase (which already has bash, coreutils, tar, findutils, grep, sed, dpkg, apt).
INCLUDE="python3,procps"
# Debian package names (policy 5.6.1), comma-separated: nothing else reaches apt-get's command line.
if [ -n "$extra_packages" ] && ! [[ "$extra_packages" =~ ^[a-z0-9][a-z0-9+.-]+(,[a-z0-9][a-z0-9+.-]+)*$ ]]; then
  echo "mkrootfs: EXTRA_PACKAGES must be comma-separated Debian package names, got '$extra_packages'" >&2
  exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/sandbox-rootfs.XXXXXX")"
root="$work/rootfs"
cleanup() {
  # debootstrap mounts proc/sys inside the target; never leave them behind, never delete through them.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

args=(--variant=minbase --include="$INCLUDE" --components=main)
if [ -r /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  args+=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
fi
if [ -n "$deb_cache" ]; then
  mkdir -p "$deb_cache"
  args+=(--cache-dir="$deb_cache")
fi

start=$(date +%s)
debootstrap "${args[@]}" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -40 "$work/debootstrap.log" >&2
  [ -r "$root/debootstrap/debootstrap.log" ] && tail -40 "$root/debootstrap/debootstrap.log" >&2
  exit 1
}
echo "mkrootfs: debootstrap took $(( $(date +%s) - start ))s" >&2

# Keep later package installs (the extra packages below, or an image built FROM this one) equally lean.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-sandbox-operator-slim" <<'EOF'
# Set by sandbox-operator's base image: no docs, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF

# --- extra packages -----------------------------------------------------------------------------------------
# apt-get rather than debootstrap --include: debootstrap's resolver always takes the first alternative of a
# dependency, apt's takes one that is asked for, so EXTRA_PACKAGES can name the small alternatives. The new system
# fetches from the mirror debootstrap wrote in its sources.list (DNS from the resolv.conf it copied; both are
# removed below).
copy_new_debs() {  # FROM_DIR TO_DIR: the .deb files TO_DIR lacks
  local f
  for f in "$1"/*.deb; do
    if [ -e "$f" ] && [ ! -e "$2/${f##*/}" ]; then cp "$f" "$2/"; fi
  done
}
in_root() {
  DEBIAN_FRONTEND=noninteractive chroot "$root" "$@" >>"$work/apt.log" 2>&1 || {
    tail -40 "$work/apt.log" >&2
    exit 1
  }
}
if [ -n "$extra_packages" ]; then
  start=$(date +%s)
  [ -z "$deb_cache" ] || copy_new_debs "$deb_cache" "$root/var/cache/apt/archives"
  in_root apt-get -q update
  # shellcheck disable=SC2086  # one word per package
  in_root apt-get -q install -y --no-install-recommends ${extra_packages//,/ }
  [ -z "$deb_cache" ] || copy_new_debs "$root/var/cache/apt/archives" "$deb_cache"
  echo "mkrootfs: apt-get install of $extra_packages took $(( $(date +%s) - start ))s" >&2
fi

# --- strip: documentation, man pages, translations, package-manager caches and lists, logs -------------------
# Keep /usr/share/doc/*/copyright (licences), like Debian's own slim images.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian "$root"/usr/share/linda \
       "$root"/usr/share/locale/* "$root"/usr/share/i18n \
       "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
       "$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache \
       "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
# The test suites of Python packages (a fifth of the data image): only their own test runners import them.
if [ -d "$root/usr/lib/python3/dist-packages" ]; then
  find "$root/usr/lib/python3/dist-packages" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
fi

cat >"$root/etc/apt/apt.conf.d/01-sandbox-operator-clean" <<'EOF'
// Set by sandbox-operator's base image: keep no downloaded packages.
APT::Keep-Downloaded-Packages "false";
Binary::apt::APT::Keep-Downloaded-Packages "false";
EOF

# Host-specific files debootstrap copies from the build machine; the container runtime provides its own.
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/hosts"
: >"$root/etc/machine-id"

# No setuid/setgid programs (su, mount, passwd, ...): nothing in a container may gain privileges.
find "$root" -xdev -perm /6000 -exec chmod ug-s {} +

# --- pack ---------------------------------------------------------------------------------------------------
# /dev, /proc and /sys stay empty: the runtime mounts them.
tar --numeric-owner --one-file-system -C "$root" \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* \
    -cf "$out.partial" .
mv -f "$out.partial" "$out"
echo "mkrootfs: $(du -sb --apparent-size "$root" | cut -f1) bytes in the root filesystem" >&2
