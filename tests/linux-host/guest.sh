#!/usr/bin/env bash
# guest.sh — run a real Linux NVMe/TCP host (Debian's stock kernel, nvme-cli, fio, e2fsprogs) in a
# QEMU guest against a target listening on THIS machine's 127.0.0.1, which the guest reaches as
# 10.0.2.2. The machine's own kernel has no nvme-tcp, hence the guest. See README.md beside this.
#
#   guest.sh --prepare                                   # download/build the cache (idempotent)
#   guest.sh --port P --nqn NQN [options] CASE...        # boot, run the cases, report
#   guest.sh --serve-target --port P --nqn NQN [options] # kernel nvmet at host 127.0.0.1:P until stopped
#
# Exit: 0 every case passed, 1 a case failed, 2 usage/setup error, 3 the guest did not finish.
# --serve-target: 0 served and stopped (SIGTERM/SIGINT/--timeout), 2 usage/port in use, 3 the guest
# did not come up or died while serving.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="${0##*/}"
CACHE="${TANDEM_LNH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem-linux-host}"
LAYOUT=1      # bump when the base initramfs contents change (forces a rebuild from cached .debs)
ALL_CASES="discover connect mkfs fio fio-perf reconnect ns-add"
# Cases that need a target the caller set up for them (not in "all"): repl-fio needs a
# replication relationship to start, through --hook-cmd.
MORE_CASES="repl-fio"
# Debian packages: the guest's tools and kernel, and QEMU itself (never installed, only unpacked).
GUEST_PKGS="busybox-static nvme-cli fio e2fsprogs kmod"
QEMU_PKGS="qemu-system-x86"
MODULES="virtio_pci virtio_net configfs nvme-core nvme-fabrics nvme-tcp nvmet nvmet-tcp brd ext4
 crc32c_generic crc32c-intel crct10dif_generic crct10dif-pclmul crc64_rocksoft_generic"

PORT="" NQN="" SELF_TARGET=0 SERVE=0 TARGET_SIZE=256 READY_FILE="" PREPARE=0 REFRESH=0 VERBOSE=0 LOG="" CASES=""
HOSTID="7a6e6465-6d00-4c4e-8800-000000000001"; HOSTNQN=""
CONNECT_OPTS="" HOOK_CMD="" HOOK_TIMEOUT=60 KARGS=""
SMP=2 MEM="" TIMEOUT=300 TEST_TIMEOUT=120 FIO_SIZE=32M FIO_IODEPTH=16 PERF_RUNTIME=10

usage() {
  cat <<EOF
Usage: $PROG --prepare [--refresh]
       $PROG --port P --nqn NQN [options] CASE...      (CASE: $ALL_CASES | all | $MORE_CASES)
       $PROG --serve-target --port P --nqn NQN [--target-size MB] [--timeout S] [--ready-file F]
Boots Debian's kernel in QEMU (TCG) and runs each CASE against the NVMe/TCP target at host
127.0.0.1:P (10.0.2.2:P from the guest).
  --hostnqn N / --hostid U   written to the guest's /etc/nvme/hostnqn, hostid (default uuid $HOSTID)
  --connect-opts S    extra 'nvme connect' options, e.g. "--hdr-digest --data-digest -i 2"
  --hook-cmd CMD      host command run as 'CMD NAME' when a case fires hook NAME (ns-add: add-ns)
  --hook-timeout S    bound for one hook command (default $HOOK_TIMEOUT)
  --smp N --mem MB    guest CPUs (one nvme-tcp I/O queue each) and memory (default $SMP, 1024)
  --timeout S         whole guest run (default $TIMEOUT); --test-timeout S: each case ($TEST_TIMEOUT)
  --fio-size SZ --fio-iodepth N    fio case (default $FIO_SIZE, $FIO_IODEPTH); --perf-runtime S ($PERF_RUNTIME)
  --kernel-args S     extra guest kernel command line, e.g. "nvme_core.multipath=N"
  --verbose           stream the guest console;  --log FILE: keep it
  --self-target       test the harness itself: in-guest kernel nvmet (RAM disk) on the guest's
                      own 127.0.0.1 (port default 4420); the host hook may be omitted
  --serve-target      no cases: the guest serves kernel nvmet (NQN, any host, ns 1 = a RAM disk)
                      on 10.0.2.15:P, forwarded from host 127.0.0.1:P; prints
                      'LNH-TARGET-READY 127.0.0.1:P' when it answers, serves until SIGTERM/SIGINT
                      or --timeout, then powers the guest off and exits 0
  --target-size MB    nvmet RAM disk size (default $TARGET_SIZE; --mem defaults to max(1024, MB+512)
                      when serving)
  --ready-file F      --serve-target: write the READY line to F (removed again on exit)
  --prepare [--refresh]  only build the cache ($CACHE); --refresh re-resolves packages
Exit: 0 all passed, 1 a case failed, 2 usage/setup error, 3 guest did not finish.
EOF
}
die()  { echo "$PROG: error: $*" >&2; exit 2; }
info() { echo "$PROG: $*" >&2; }
now()  { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
int()  { case "$2" in ''|*[!0-9]*) die "$1 needs an integer, got '$2'";; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) PREPARE=1; shift; continue;;
    --refresh) REFRESH=1; shift; continue;;
    --self-target) SELF_TARGET=1; shift; continue;;
    --serve-target) SERVE=1; shift; continue;;
    --verbose) VERBOSE=1; shift; continue;;
    -h|--help) usage; exit 0;;
    --*) [ $# -ge 2 ] || die "$1 needs a value";;
  esac
  case "$1" in
    --port) int "$1" "$2"; PORT="$2";;
    --nqn) NQN="$2";;
    --hostnqn) HOSTNQN="$2";;
    --hostid) HOSTID="$2";;
    --connect-opts) CONNECT_OPTS="$2";;
    --hook-cmd) HOOK_CMD="$2";;
    --hook-timeout) int "$1" "$2"; HOOK_TIMEOUT="$2";;
    --smp) int "$1" "$2"; SMP="$2";;
    --mem) int "$1" "$2"; MEM="$2";;
    --target-size) int "$1" "$2"; TARGET_SIZE="$2";;
    --ready-file) READY_FILE="$2";;
    --timeout) int "$1" "$2"; TIMEOUT="$2";;
    --test-timeout) int "$1" "$2"; TEST_TIMEOUT="$2";;
    --fio-size) FIO_SIZE="$2";;
    --fio-iodepth) int "$1" "$2"; FIO_IODEPTH="$2";;
    --perf-runtime) int "$1" "$2"; PERF_RUNTIME="$2";;
    --kernel-args) KARGS="$2";;
    --log) LOG="$2";;
    all) CASES="$CASES $ALL_CASES"; shift; continue;;
    -*) usage >&2; die "unknown option $1";;
    *) [[ " $ALL_CASES $MORE_CASES " == *" $1 "* ]] || die "unknown case '$1' (cases: $ALL_CASES $MORE_CASES)"
       CASES="$CASES $1"; shift; continue;;
  esac
  shift 2
done
HOSTNQN="${HOSTNQN:-nqn.2014-08.org.nvmexpress:uuid:$HOSTID}"
port_free() {  # host 127.0.0.1:P has no listener (SO_REUSEADDR, as QEMU's hostfwd binds it)
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
if [ "$PREPARE" = 0 ] && [ "$SERVE" = 1 ]; then
  [ -z "$CASES" ] || die "--serve-target runs no cases (got:$CASES)"
  [ "$SELF_TARGET" = 0 ] || die "--serve-target and --self-target exclude each other"
  { [ -n "$PORT" ] && [ -n "$NQN" ]; } || die "--port and --nqn are required"
  [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "--port $PORT is out of range"
  [ "$TARGET_SIZE" -ge 1 ] || die "--target-size must be at least 1 MB"
  command -v python3 >/dev/null || die "python3 is required (port check, ICReq probe)"
  port_free "$PORT" || die "host 127.0.0.1:$PORT is already in use"
  MEM="${MEM:-$((TARGET_SIZE + 512 > 1024 ? TARGET_SIZE + 512 : 1024))}"
elif [ "$PREPARE" = 0 ]; then
  [ -n "$CASES" ] || { usage >&2; die "no CASE given"; }
  if [ "$SELF_TARGET" = 1 ]; then
    PORT="${PORT:-4420}"; NQN="${NQN:-nqn.2024-01.io.tandem:lnh-selftest}"
  else
    { [ -n "$PORT" ] && [ -n "$NQN" ]; } || die "--port and --nqn are required"
    [[ " $CASES " != *" ns-add "* ]] || [ -n "$HOOK_CMD" ] || die "case ns-add needs --hook-cmd"
    [[ " $CASES " != *" repl-fio "* ]] || [ -n "$HOOK_CMD" ] || die "case repl-fio needs --hook-cmd"
  fi
  command -v python3 >/dev/null || die "python3 is required (hook server)"
fi
MEM="${MEM:-1024}"

# ---------------------------------------------------------------------------------------------
# Cache: one root unpacked from .debs (guest tools, kernel, QEMU + every library of theirs,
# libc included, so nothing depends on what the host has installed), and image/ with the kernel
# and the base initramfs. Everything runs through the unpacked ld.so.
# ---------------------------------------------------------------------------------------------
ROOT="$CACHE/root" IMG="$CACHE/image"
LDSO="$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
gld() { "$LDSO" --inhibit-cache --library-path "$LIBPATH" "$@"; }
set_libpath() { LIBPATH=$(find "$ROOT" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:); }

apt_ready() {
  apt-cache show busybox-static >/dev/null 2>&1 && [ "${1:-}" != update ] && return
  [ "$(id -u)" = 0 ] || die "apt package lists are missing or stale; run 'apt-get update' as root"
  info "apt-get update"
  apt-get update -q >/dev/null || die "apt-get update failed"
}

# The full closure (against an EMPTY dpkg status, so the result is the same on any host),
# filtered to the packages whose files we use, as name=version lines.
resolve() {
  local kpkg empty
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
  empty=$(mktemp)
  # shellcheck disable=SC2086
  apt-get -o Dir::State::status="$empty" install -s --no-install-recommends $GUEST_PKGS $QEMU_PKGS "$kpkg" 2>/dev/null \
    | awk '/^Inst /{v=$3; gsub(/[()]/,"",v); print $2"="v}' \
    | grep -E "^(lib[^=]*|zlib1g|busybox-static|nvme-cli|fio|e2fsprogs|kmod|qemu-system-[^=]*|seabios|ipxe-qemu|$kpkg)=" \
    | grep -vE '^lib[^=]*(perl|python)' || true
  rm -f "$empty"
}

deb_of() { local v="${1#*=}"; compgen -G "$CACHE/debs/${1%%=*}_${v//:/%3a}_*.deb" | head -n1; }

fetch() {  # name=version... -> all in $CACHE/debs
  local p need=()
  for p in "$@"; do deb_of "$p" >/dev/null || need+=("$p"); done
  [ ${#need[@]} = 0 ] && return 0
  info "downloading ${#need[@]} Debian packages"
  local apt_opts=(-q); [ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)
  (cd "$CACHE/debs" && apt-get "${apt_opts[@]}" download "${need[@]}" >/dev/null)
}

prepare_root() {
  local pkgs p
  apt_ready
  pkgs=$(resolve)
  if ! grep -q '^qemu-system-x86=' <<<"$pkgs" || ! grep -q '^linux-image-[0-9]' <<<"$pkgs"; then
    die "could not resolve the packages (apt-get install -s failed)"
  fi
  mkdir -p "$CACHE/debs"
  # shellcheck disable=SC2086
  if ! fetch $pkgs; then   # stale lists (a security update replaced a version): update, retry
    apt_ready update; pkgs=$(resolve)
    # shellcheck disable=SC2086
    fetch $pkgs || die "apt-get download failed"
  fi
  info "unpacking $(wc -l <<<"$pkgs") packages"
  rm -rf "$ROOT" "$IMG"; mkdir -p "$ROOT"
  for p in $pkgs; do dpkg-deb -x "$(deb_of "$p")" "$ROOT" || die "dpkg-deb -x failed for $p"; done
  echo "$pkgs" > "$CACHE/packages.txt"
}

# The bzImage is xz-compressed and its decompressor costs seconds under TCG; the ELF vmlinux
# inside has a Xen PVH entry note, which QEMU boots directly with -kernel.
extract_pvh() {  # bzImage vmlinux
  python3 - "$1" "$2" <<'PY'
import lzma, struct, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0: sys.exit(1)
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
if elf[:4] != b'\x7fELF': sys.exit(1)
phoff, = struct.unpack_from('<Q', elf, 0x20); phentsize, phnum = struct.unpack_from('<HH', elf, 0x36)
for k in range(phnum):
    typ, _, off, _, _, size = struct.unpack_from('<IIQQQQ', elf, phoff + k * phentsize)
    o = off
    while typ == 4 and o + 12 <= off + size:          # PT_NOTE: look for Xen note 18 (PHYS32_ENTRY)
        nsz, dsz, ntyp = struct.unpack_from('<III', elf, o)
        if elf[o + 12:o + 12 + nsz].rstrip(b'\0') == b'Xen' and ntyp == 18:
            open(sys.argv[2], 'wb').write(elf); sys.exit(0)
        o += 12 + (nsz + 3 & ~3) + (dsz + 3 & ~3)
sys.exit(1)
PY
}

build_image() {
  local kpkg kver R M f m lib a
  kpkg=$(grep '^linux-image-' "$CACHE/packages.txt"); kver=${kpkg%%=*}; kver=${kver#linux-image-}
  if [ ! -d "$ROOT/lib/modules/$kver/kernel" ]; then   # pruned after an earlier build
    dpkg-deb -x "$(deb_of "$kpkg")" "$ROOT" || die "cannot unpack $kpkg; try --prepare --refresh"
  fi
  set_libpath
  info "building the initramfs (kernel $kver)"
  R="$CACHE/build"; rm -rf "$R" "$IMG"; mkdir -p "$IMG"
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc/nvme,proc,sys,dev,tmp,run,mnt,lnh}
  cp "$ROOT/bin/busybox" "$R/bin/"
  for a in $("$R/bin/busybox" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
  # dynamically linked tools, with the libraries the guest's own ld.so resolves for them
  for f in usr/sbin/nvme usr/bin/fio sbin/mke2fs sbin/e2fsck bin/kmod; do
    [ -x "$ROOT/$f" ] || die "missing $f in the unpacked packages"
    cp -L "$ROOT/$f" "$R/$f"
    a=$(gld --list "$ROOT/$f" 2>&1) || die "libraries of $f: $a"
    if grep -q 'not found' <<<"$a"; then die "libraries of $f: $a"; fi
    for lib in $(awk '/=> \//{print $3}' <<<"$a"); do
      [ -e "$R/lib/x86_64-linux-gnu/${lib##*/}" ] || cp -L "$lib" "$R/lib/x86_64-linux-gnu/"
    done
  done
  cp -L "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$R/lib64/"
  ln -s mke2fs "$R/sbin/mkfs.ext4"; ln -s e2fsck "$R/sbin/fsck.ext4"
  for a in modprobe insmod lsmod depmod; do ln -s /bin/kmod "$R/sbin/$a"; done
  cp "$ROOT/etc/mke2fs.conf" "$R/etc/"
  # kernel modules: each wanted one plus what modprobe says it needs, softdeps included
  M="$ROOT/lib/modules/$kver"
  [ -f "$M/modules.dep" ] || gld --argv0 depmod "$ROOT/bin/kmod" -b "$ROOT" "$kver" || die "depmod failed"
  for m in $MODULES; do
    for f in $(gld --argv0 modprobe "$ROOT/bin/kmod" -d "$ROOT" -S "$kver" --show-depends "$m" 2>/dev/null \
               | awk '$1=="insmod"{print $2}'); do
      mkdir -p "$(dirname "$R/${f#"$ROOT"/}")"; cp "$f" "$R/${f#"$ROOT"/}"
    done
  done
  cp "$M/modules.order" "$M/modules.builtin" "$M/modules.builtin.modinfo" "$R/lib/modules/$kver/"
  gld --argv0 depmod "$ROOT/bin/kmod" -b "$R" "$kver" || die "depmod failed"
  for m in nvme-tcp nvmet-tcp virtio_net brd ext4; do
    grep -q "/$m.ko" "$R/lib/modules/$kver/modules.dep" || die "module $m missing from the initramfs"
  done
  echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
  (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | "$R/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
    > "$IMG/initramfs.cpio" || die "cpio failed"
  cp "$ROOT/boot/vmlinuz-$kver" "$IMG/vmlinuz"
  extract_pvh "$IMG/vmlinuz" "$IMG/vmlinux" || { rm -f "$IMG/vmlinux"; info "no PVH vmlinux, booting the bzImage"; }
  rm -rf "$R" "${ROOT:?}/lib/modules" "${ROOT:?}"/usr/share/{doc,man,locale}   # ~450 MiB, only for building
  echo "$kver" > "$IMG/kver"
  image_stamp > "$IMG/stamp"
}
image_stamp() { echo "layout=$LAYOUT $(md5sum < "$CACHE/packages.txt" | cut -c1-12) $MODULES"; }

prepare() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 900 9 || die "timed out waiting for the cache lock $CACHE/.lock"
  if [ "$REFRESH" = 1 ] || [ ! -f "$CACHE/packages.txt" ]; then prepare_root; fi
  [ "$(cat "$IMG/stamp" 2>/dev/null)" = "$(image_stamp)" ] || build_image
  set_libpath
  QEMU="$ROOT/usr/bin/qemu-system-x86_64"
  gld "$QEMU" --version >/dev/null 2>&1 || die "the unpacked QEMU does not run; try --prepare --refresh"
  flock -u 9
}

T0=$(now)
command -v apt-get >/dev/null || [ -f "$IMG/stamp" ] || die "apt-get is required to build the cache"
prepare
if [ "$PREPARE" = 1 ]; then
  info "cache ready in $(since "$T0") s: $CACHE (kernel $(cat "$IMG/kver"), $(gld "$QEMU" --version | head -n1))"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# One run: per-run files (/init, /lnh/env, /lnh/cases.sh) are a small cpio appended to the base.
# ---------------------------------------------------------------------------------------------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/tandem-lnh.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$LOG" ] && [ -f "$RUN/console.log" ] && cp "$RUN/console.log" "$LOG"
  [ -n "$READY_FILE" ] && rm -f "$READY_FILE"   # it exists only while the target serves
  if [ -n "${TANDEM_LNH_KEEP:-}" ]; then info "run files kept in $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -n "$READY_FILE" ] && rm -f "$READY_FILE"     # a stale one must not say "ready"

# Hook server: the guest polls http://10.0.2.2:HTTP_PORT/hook-ID for the answer to its hook ID.
HTTP_PORT=""
if [ "$SERVE" = 0 ]; then
  mkdir -p "$RUN/www"
  HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$RUN/www" >"$RUN/http.log" 2>&1 &
  PIDS+=("$!")
fi

shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
ADDR=10.0.2.2; [ "$SELF_TARGET" = 1 ] && ADDR=127.0.0.1; [ "$SERVE" = 1 ] && ADDR=10.0.2.15
mkdir -p "$RUN/extra/lnh"
printf '#!/bin/sh\n. /lnh/env\n. /lnh/cases.sh\nlnh_main\n' > "$RUN/extra/init"; chmod 755 "$RUN/extra/init"
cp "$HERE/cases.sh" "$RUN/extra/lnh/cases.sh"
for v in ADDR PORT NQN HOSTNQN HOSTID CONNECT_OPTS SELF_TARGET SERVE TARGET_SIZE TEST_TIMEOUT HTTP_PORT \
         HOOK_TIMEOUT FIO_SIZE FIO_IODEPTH PERF_RUNTIME; do
  echo "LNH_$v=$(shq "${!v}")"
done > "$RUN/extra/lnh/env"
WATCHDOG=$((TIMEOUT > 20 ? TIMEOUT - 10 : TIMEOUT))
[ "$SERVE" = 1 ] && WATCHDOG=$((TIMEOUT + 20))   # serving: the host stops the guest at --timeout
{ echo "LNH_CASES=$(shq "${CASES# }")"; echo "LNH_WATCHDOG=$WATCHDOG"
  echo "export LNH_ADDR LNH_PORT LNH_NQN"; } >> "$RUN/extra/lnh/env"
(cd "$RUN/extra" && find . -mindepth 1 | "$ROOT/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) > "$RUN/extra.cpio"
exec 9<"$CACHE/.lock"; flock -s 9; cat "$IMG/initramfs.cpio" "$RUN/extra.cpio" > "$RUN/initrd"; exec 9<&-

KERNEL="$IMG/vmlinux"; [ -f "$KERNEL" ] || KERNEL="$IMG/vmlinuz"
# shellcheck disable=SC2054  # commas are QEMU option syntax
ACCEL=(-accel tcg,thread=multi -cpu max)      # /dev/kvm here is PVM: it can't run a stock kernel
# shellcheck disable=SC2054
[ "${TANDEM_LNH_ACCEL:-tcg}" = kvm ] && ACCEL=(-accel kvm -cpu host)
: > "$RUN/results"; : > "$RUN/console.log"
# --serve-target: the target on host 127.0.0.1:P (loopback only), and a control port (ttyS2, a
# FIFO pair) on which the host asks the guest to power off.
NET_EXTRA="" SERVE_ARGS=() QLIMIT="$TIMEOUT"
if [ "$SERVE" = 1 ]; then
  NET_EXTRA=",hostfwd=tcp:127.0.0.1:$PORT-10.0.2.15:$PORT"
  mkfifo "$RUN/ctl.in" "$RUN/ctl.out"
  SERVE_ARGS=(-serial "pipe:$RUN/ctl"); QLIMIT=$((TIMEOUT + 40))
fi
# shellcheck disable=SC2054
QEMU_CMD=(env "QEMU_MODULE_DIR=$ROOT/usr/lib/x86_64-linux-gnu/qemu"   # its TCG accelerator is a module
  "$LDSO" --inhibit-cache --library-path "$LIBPATH" "$QEMU"
  -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" "${ACCEL[@]}"
  -m "$MEM" -smp "$SMP" -display none -nodefaults -no-user-config -no-reboot -monitor none
  -serial "file:$RUN/console.log" -serial "file:$RUN/results" "${SERVE_ARGS[@]}"
  -netdev "user,id=n0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2$NET_EXTRA" -device virtio-net-pci,netdev=n0,romfile=
  -kernel "$KERNEL" -initrd "$RUN/initrd" -append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init $KARGS")

if [ "$SERVE" = 1 ]; then
  info "serve-target: nvmet $NQN, ${TARGET_SIZE} MiB RAM disk, guest 10.0.2.15:$PORT <- host 127.0.0.1:$PORT (TCG, smp $SMP, mem $MEM)"
else
  info "target ${ADDR}:$PORT nqn=$NQN cases:$CASES${CONNECT_OPTS:+ connect-opts: $CONNECT_OPTS} (TCG, smp $SMP)"
fi
T_Q=$(now)
timeout -k 5 "$QLIMIT" "${QEMU_CMD[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!; PIDS+=("$QPID")
if [ "$VERBOSE" = 1 ]; then   # serving: stdout is for the READY line, so the console goes to stderr
  if [ "$SERVE" = 1 ]; then tail -n +1 -f --pid="$QPID" "$RUN/console.log" >&2 & else tail -n +1 -f --pid="$QPID" "$RUN/console.log" & fi
  PIDS+=("$!")
fi

# Hook: run HOOK_CMD NAME on the host, then publish "rc=N" + its output as www/hook-ID.
run_hook() {  # ID NAME
  local id="$1" name="$2" rc out
  if [[ ! "$id" =~ ^[0-9]+$ || ! "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then info "ignoring malformed hook line"; return; fi
  if [ -n "$HOOK_CMD" ]; then
    info "hook $id '$name': $HOOK_CMD $name"
    # output to a file, not a pipe: a daemon the hook starts must not hold us up
    set +e
    LNH_HOOK="$name" LNH_PORT="$PORT" LNH_NQN="$NQN" timeout -k 5 "$HOOK_TIMEOUT" \
      bash -c "$HOOK_CMD \"\$1\"" lnh-hook "$name" </dev/null >"$RUN/hook.out" 2>&1
    rc=$?; set -e
    out=$(head -c 4096 "$RUN/hook.out")
  elif [ "$SELF_TARGET" = 1 ]; then rc=0; out="self-target: the guest acts on '$name' itself"
  else rc=127; out="no --hook-cmd given"; fi
  [ -n "$out" ] && sed 's/^/  [hook] /' <<<"$out" >&2
  { echo "rc=$rc"; [ -z "$out" ] || echo "$out"; } > "$RUN/www/.reply" && mv "$RUN/www/.reply" "$RUN/www/hook-$id"
  echo "LNH-HOOK-DONE $id $name rc=$rc"
}
SEEN=0
poll_results() {  # print new complete result lines, serve hooks
  local line n=0
  while IFS= read -r line; do
    n=$((n + 1)); [ "$n" -le "$SEEN" ] && continue
    SEEN=$n; line="${line%$'\r'}"
    echo "$line"
    if [[ "$line" == "LNH-HOOK "* ]]; then read -r _ id name _ <<<"$line"; run_hook "$id" "$name"; fi
  done < "$RUN/results"
}
guest_diag() {  # the console tail, the guest's nvme kernel messages, qemu's own output
  local con
  con=$(tr -d '\r' < "$RUN/console.log")
  echo "---------------- guest console (last 60 lines) ----------------"
  sed '/^LNH-DMESG-BEGIN/,$d' <<<"$con" | tail -n 60
  echo "---------------- guest nvme kernel messages ----------------"
  sed -n '/^LNH-DMESG-BEGIN/,/^LNH-DMESG-END/{/^LNH-DMESG/d;p}' <<<"$con"
  [ -s "$RUN/qemu.log" ] && { echo "---------------- qemu ----------------"; tail -n 20 "$RUN/qemu.log"; }
  return 0
}

# --serve-target: one NVMe/TCP ICReq through the forward must get a 128-byte ICResp (PDU type 1).
icreq_probe() {  # PORT
  python3 - "$1" <<'PY' 2>/dev/null
import socket, struct, sys
# type 0 ICReq, flags 0, hlen 128, pdo 0, plen 128; pfv 0, hpda 0, dgst 0, maxr2t 0; 112 reserved
req = struct.pack('<BBBBIHBBI', 0, 0, 128, 0, 128, 0, 0, 0, 0) + bytes(112)
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)
s.sendall(req)
r = b''
while len(r) < 128:
    b = s.recv(128 - len(r))
    if not b:
        break
    r += b
s.close()
sys.exit(0 if len(r) == 128 and r[0] == 1 and r[2] == 128 else 1)
PY
}
serve() {
  local deadline i ready
  STOP=""
  deadline=$(awk -v t="$T_Q" -v s="$TIMEOUT" 'BEGIN{printf "%d", t + s}')
  past() { [ "$(date +%s)" -ge "$deadline" ]; }
  # 1. boot until the guest says nvmet listens (or gives up)
  while kill -0 "$QPID" 2>/dev/null && ! past; do
    poll_results
    grep -q '^LNH-TARGET-LISTENING' "$RUN/results" && break
    grep -q '^LNH-DONE' "$RUN/results" && break
    sleep 0.2
  done
  poll_results
  if ! grep -q '^LNH-TARGET-LISTENING' "$RUN/results"; then
    if grep -q 'host forwarding' "$RUN/qemu.log" 2>/dev/null; then
      cat "$RUN/qemu.log" >&2; die "host 127.0.0.1:$PORT could not be forwarded (in use?)"
    fi
    echo "LNH-DONE FAIL serve-target not listening after $(since "$T_Q") s"; guest_diag; exit 3
  fi
  # 2. the host side answers NVMe/TCP (slirp accepts on the host even before the guest listens)
  for i in 1 2 3 4 5 6 7 8 9 10; do
    icreq_probe "$PORT" && break
    [ "$i" = 10 ] && { echo "LNH-DONE FAIL no ICResp on 127.0.0.1:$PORT"; guest_diag; exit 3; }
    sleep 1
  done
  ready="LNH-TARGET-READY 127.0.0.1:$PORT"
  echo "$ready"
  if [ -n "$READY_FILE" ]; then echo "$ready" > "$READY_FILE.tmp.$$" && mv "$READY_FILE.tmp.$$" "$READY_FILE"; fi
  info "target ready $(since "$T_Q") s after qemu start: $NQN at 127.0.0.1:$PORT (other guests: 10.0.2.2:$PORT); serving until SIGTERM/SIGINT or $TIMEOUT s"
  # 3. serve; the loop's short sleeps let the trap run promptly
  trap 'STOP=signal' INT TERM
  while [ -z "$STOP" ]; do
    kill -0 "$QPID" 2>/dev/null || { poll_results; echo "LNH-DONE FAIL the target guest died while serving"; guest_diag; exit 3; }
    past && STOP="--timeout $TIMEOUT s"
    poll_results; sleep 0.2
  done
  trap '' INT TERM
  [ -n "$READY_FILE" ] && rm -f "$READY_FILE"
  # 4. ask the guest to power off (<> never blocks on the FIFO), give it 15 s, then stop QEMU
  info "stopping ($STOP): powering the guest off"
  echo stop 1<>"$RUN/ctl.in"
  for i in $(seq 75); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$QPID" 2>/dev/null; then info "the guest did not power off within 15 s: stopping qemu"; kill "$QPID"; fi
  set +e; wait "$QPID"; QRC=$?; set -e
  poll_results
  info "served $(since "$T_Q") s (qemu rc $QRC), total $(since "$T0") s, exit 0"
  exit 0
}
[ "$SERVE" = 1 ] && serve

while kill -0 "$QPID" 2>/dev/null; do poll_results; sleep 0.2; done
set +e; wait "$QPID"; QRC=$?; set -e
poll_results

RES=$(tr -d '\r' < "$RUN/results")
DONE=$(grep '^LNH-DONE' <<<"$RES" | tail -n1 || true)
RC=0
for c in $CASES; do grep -q "^LNH-RESULT $c PASS" <<<"$RES" || RC=1; done
if [ -z "$DONE" ] || [[ "$DONE" == *watchdog* ]]; then
  RC=3; [ -n "$DONE" ] || echo "LNH-DONE FAIL guest-did-not-finish qemu-rc=$QRC"
  [ "$QRC" = 124 ] && echo "($PROG: qemu killed after --timeout $TIMEOUT s)"
elif [[ "$DONE" != "LNH-DONE PASS"* ]]; then RC=1
fi
[ "$RC" = 0 ] || guest_diag
info "guest run $(since "$T_Q") s (qemu rc $QRC), total $(since "$T0") s, exit $RC"
exit "$RC"
