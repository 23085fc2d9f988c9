#!/usr/bin/env bash
# Out-of-cluster smoke test of a runc build: user namespace, idmapped bind mounts (ext4 + tmpfs), cgroup v1 limits,
# and RLIMIT_NPROC counted per user namespace. No containerd, no cluster; private runc state root, cleans up after itself.
# Usage (root; needs busybox-static, jq, python3): hack/tools/runc/userns-smoke.sh [runc]   (default: the pinned build)
# Debian runc 1.1.5 passes everything except the idmapped mounts (it silently ignores the "idmap" option).
# A check that fails is counted and reported, and the next one runs; the exit status says whether all passed.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../lib.sh"
RUNC="${1:-$CONTAINERD2_BIN_DIR/runc}"
[ -x "$RUNC" ] || die "no runc at $RUNC (build it: SANDBOX_CONTAINERD=2 hack/build-binaries.sh)"
RUNC="$(readlink -f "$RUNC")"
T=/tmp/sbx-userns-test/work
STATE=/run/sbx-runc-test
CG=sbx-runc-test
PASS=0 FAIL=0
ok() { echo "PASS: $*"; PASS=$((PASS + 1)); }
bad() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }
r() { "$RUNC" --root "$STATE" "$@"; }
indent() { sed 's/^/  /'; }

cleanup() {
  local c d
  for c in $(r list -q 2>/dev/null); do
    r kill "$c" KILL 2>/dev/null || true
    sleep 0.2
    r delete -f "$c" 2>/dev/null || true
  done
  if mountpoint -q "$T/tmpfs"; then umount "$T/tmpfs"; fi
  rm -rf "$T" "$STATE"
  for d in /sys/fs/cgroup/*/"$CG"; do
    if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}
trap cleanup EXIT
cleanup
mkdir -p "$T" "$STATE"

echo "== $("$RUNC" --version | tr '\n' ' ')"
echo "== kernel $(uname -r)"

# rootfs: Debian busybox-static; one copy per host ID base (the rootfs itself is chowned, as runc does not idmap it).
mkroot() { # dir owner
  mkdir -p "$1"/{bin,proc,sys,dev,tmp,data-ext4,data-tmpfs,data-plain,etc}
  cp /bin/busybox "$1/bin/busybox"
  chroot "$1" /bin/busybox --install -s /bin
  echo "root:x:0:0:root:/:/bin/sh" >"$1/etc/passwd"
  chown -R "$2:$2" "$1"
}
mkroot "$T/rootfs-root" 0
mkroot "$T/rootfs-100000" 100000
mkroot "$T/rootfs-200000" 200000
(cd "$T" && "$RUNC" spec && mv config.json base.json)

# bundle <name> <rootfs> <hostid|none> <uid> <jq-extra> -- args...
bundle() {
  local name="$1" rootfs="$2" hostid="$3" uid="$4" extra="$5"; shift 6
  mkdir -p "$T/$name"
  local args; args="$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")"
  jq --arg root "$rootfs" --arg cg "/$CG/$name" --argjson uid "$uid" --argjson args "$args" '
      .root = {path: $root, readonly: false}
    | .process.terminal = false | .process.args = $args
    | .process.user = {uid: $uid, gid: $uid}
    | .linux.cgroupsPath = $cg' "$T/base.json" >"$T/$name/config.json"
  if [ "$hostid" != none ]; then
    jq --argjson h "$hostid" '
        .linux.namespaces += [{type: "user"}]
      | .linux.uidMappings = [{containerID: 0, hostID: $h, size: 65536}]
      | .linux.gidMappings = [{containerID: 0, hostID: $h, size: 65536}]' \
      "$T/$name/config.json" >"$T/$name/c.tmp" && mv "$T/$name/c.tmp" "$T/$name/config.json"
  fi
  if [ -n "$extra" ]; then
    jq --argjson h "${hostid/none/0}" --arg T "$T" "$extra" "$T/$name/config.json" >"$T/$name/c.tmp" &&
      mv "$T/$name/c.tmp" "$T/$name/config.json"
  fi
}

# --- 1. plain user namespace --------------------------------------------------------------------------
bundle userns "$T/rootfs-100000" 100000 0 '' -- sh -c 'id; cat /proc/self/uid_map; ls -ln / | head -3'
rc=0; out="$(r run --bundle "$T/userns" t-userns 2>&1)" || rc=$?
indent <<<"$out"
if [ $rc = 0 ] && grep -q '^ *0 *100000 *65536' <<<"$out"; then ok "user namespace (0 -> 100000, 65536)"; else bad "user namespace rc=$rc"; fi

# --- 2. idmapped bind mounts: ext4 dir and tmpfs, plus a non-idmapped control ---------------------------
mkdir -p "$T/ext4" "$T/tmpfs"
mount -t tmpfs -o size=4m sbx-userns-tmpfs "$T/tmpfs"
echo host >"$T/ext4/hostfile"; echo host >"$T/tmpfs/hostfile"
chmod 777 "$T/ext4" "$T/tmpfs"
# shellcheck disable=SC2016  # $h is jq's variable
idm='{uidMappings: [{containerID: 0, hostID: $h, size: 65536}], gidMappings: [{containerID: 0, hostID: $h, size: 65536}]}'
# shellcheck disable=SC2016  # expanded by the container's shell
bundle idmap "$T/rootfs-100000" 100000 0 "
  .mounts += [
    ({destination: \"/data-ext4\", type: \"bind\", source: (\$T + \"/ext4\"), options: [\"bind\", \"rw\", \"idmap\"]} + $idm),
    ({destination: \"/data-tmpfs\", type: \"bind\", source: (\$T + \"/tmpfs\"), options: [\"bind\", \"rw\", \"idmap\"]} + $idm),
    {destination: \"/data-plain\", type: \"bind\", source: (\$T + \"/ext4\"), options: [\"bind\", \"rw\"]}]" -- \
  sh -c 'for d in /data-ext4 /data-tmpfs /data-plain; do echo "$d: $(stat -c %u:%g $d/hostfile)"; done
         echo c >/data-ext4/fromct && echo c >/data-tmpfs/fromct && echo written'
rc=0; out="$(r run --bundle "$T/idmap" t-idmap 2>&1)" || rc=$?
indent <<<"$out"
echo "  host view: ext4/fromct $(stat -c %u:%g "$T/ext4/fromct" 2>&1), tmpfs/fromct $(stat -c %u:%g "$T/tmpfs/fromct" 2>&1)"
if [ $rc = 0 ] && grep -q '/data-ext4: 0:0' <<<"$out" && [ "$(stat -c %u "$T/ext4/fromct" 2>/dev/null)" = 0 ]; then
  ok "idmapped ext4 bind mount (host 0 <-> container 0)"; else bad "idmapped ext4 bind mount rc=$rc"; fi
if [ $rc = 0 ] && grep -q '/data-tmpfs: 0:0' <<<"$out" && [ "$(stat -c %u "$T/tmpfs/fromct" 2>/dev/null)" = 0 ]; then
  ok "idmapped tmpfs bind mount"; else bad "idmapped tmpfs bind mount rc=$rc"; fi
if grep -q '/data-plain: 65534:65534' <<<"$out"; then ok "control: non-idmapped bind shows overflow id 65534"; else bad "control mount"; fi

# --- 3. cgroup v1 (cgroupfs driver): pids + memory limits inside a user namespace -----------------------
# shellcheck disable=SC2016  # expanded by the container's shell
bundle cgroup "$T/rootfs-100000" 100000 0 '.linux.resources.pids = {limit: 20} | .linux.resources.memory = {limit: 67108864}' -- \
  sh -c 'grep -E "pids|memory" /proc/self/cgroup; sh -c "for i in \$(seq 30); do sleep 10 & done" 2>/dev/null; set -- /proc/[0-9]*; echo "procs=$#"; exec sleep 3'
rc=0; r run -d --bundle "$T/cgroup" t-cgroup >"$T/cgroup.out" 2>&1 || rc=$?
sleep 1.5
pmax="$(cat "/sys/fs/cgroup/pids/$CG/cgroup/pids.max" 2>&1)" || true
pcur="$(cat "/sys/fs/cgroup/pids/$CG/cgroup/pids.current" 2>&1)" || true
mmax="$(cat "/sys/fs/cgroup/memory/$CG/cgroup/memory.limit_in_bytes" 2>&1)" || true
echo "  host: pids.max=$pmax pids.current=$pcur memory.limit_in_bytes=$mmax"
sleep 3; r delete -f t-cgroup >/dev/null 2>&1 || true
indent <"$T/cgroup.out"
if [ $rc = 0 ] && [ "$pmax" = 20 ] && [ "$mmax" = 67108864 ] && grep -q 'procs=19' "$T/cgroup.out"; then
  ok "cgroup v1 pids/memory limits applied and enforced (procs capped at 20)"; else bad "cgroup v1 rc=$rc"; fi

# --- 4. RLIMIT_NPROC: per sandbox with user namespaces, shared without --------------------------------
nproc='.process.rlimits = [{type: "RLIMIT_NPROC", hard: 10, soft: 10}]'
# ash exits when fork fails, so an inner shell forks until EAGAIN; the outer one counts with builtins only (no fork).
# shellcheck disable=SC2016  # expanded by the container's shell
spawn='sh -c "for i in \$(seq 15); do sleep 20 & done" 2>/dev/null; set -- /proc/[0-9]*; echo "procs=$#"; exec sleep 20'
count() { # container-name: processes of the container's uid, counted in its pid namespace
  sed -n '/procs=/{s/.*procs=\([0-9]*\).*/\1/p;q}' "$T/$1.out"
}
nproc_pair() { # label rootfsA hostA rootfsB hostB
  local label="$1"
  bundle "n-$label-a" "$2" "$3" 1000 "$nproc" -- sh -c "$spawn"
  bundle "n-$label-b" "$4" "$5" 1000 "$nproc" -- sh -c "$spawn"
  r run -d --bundle "$T/n-$label-a" "n-$label-a" >"$T/n-$label-a.out" 2>&1 || true
  sleep 2
  local rc=0
  r run -d --bundle "$T/n-$label-b" "n-$label-b" >"$T/n-$label-b.out" 2>&1 || rc=$?
  echo "rc=$rc" >>"$T/n-$label-b.out"
  sleep 2
  echo "  [$label] A: $(tr '\n' ' ' <"$T/n-$label-a.out")"
  echo "  [$label] B: $(tr '\n' ' ' <"$T/n-$label-b.out")"
  echo "  [$label] host processes per uid: $(ps -eo uid= | sort -n | uniq -c | awk '$2>=1000{printf "uid %s: %s; ", $2, $1}')"
  r kill "n-$label-a" KILL 2>/dev/null || true
  r kill "n-$label-b" KILL 2>/dev/null || true
  sleep 0.5
  r delete -f "n-$label-a" >/dev/null 2>&1 || true
  r delete -f "n-$label-b" >/dev/null 2>&1 || true
}
nproc_pair userns "$T/rootfs-100000" 100000 "$T/rootfs-200000" 200000
if [ "$(count n-userns-a)" = 9 ] && [ "$(count n-userns-b)" = 9 ]; then
  ok "RLIMIT_NPROC=10 counted per sandbox with user namespaces (A and B each ran 9 processes of uid 1000 at once)"
else bad "RLIMIT_NPROC with userns: A=$(count n-userns-a) B=$(count n-userns-b)"; fi
nproc_pair hostusers "$T/rootfs-root" none "$T/rootfs-root" none
if [ "$(count n-hostusers-a)" = 9 ] && [ "$(count n-hostusers-b)" != 9 ]; then
  ok "control: without user namespaces both sandboxes share host uid 1000's budget (B did not get its 10)"
else bad "control without userns: A=$(count n-hostusers-a) B=$(count n-hostusers-b)"; fi

echo "== $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
