#!/usr/bin/env bash
# Builds the root filesystem of the base image as a tar: Debian minbase + python3 (+ procps), stripped.
#
#   images/base/mkrootfs.sh OUT.tar SUITE MIRROR [DEB_CACHE_DIR]
#
# Runs as root (debootstrap needs it). MIRROR comes from the machine's apt configuration (the caller reads it);
# no hostname is written here. The result is what `buildah add CTR OUT.tar /` turns into an image layer.
set -euo pipefail

out="${1:?usage: mkrootfs.sh OUT.tar SUITE MIRROR [DEB_CACHE_DIR]}"
suite="${2:?suite}"
mirror="${3:?mirror}"
deb_cache="${4:-}"

# Packages on top of minbase (which already has bash, coreutils, tar, findutils, grep, sed, dpkg, apt).
INCLUDE="python3,procps"

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

# Keep later package installs (for example by an image built FROM this one) equally lean.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-sandbox-operator-slim" <<'EOF'
# Set by sandbox-operator's base image: no docs, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
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
