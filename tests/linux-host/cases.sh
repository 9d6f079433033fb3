# cases.sh — the guest side of tests/linux-host (busybox sh). guest.sh copies it into the initramfs
# of every run as /lnh/cases.sh, beside /lnh/env (LNH_* settings); /init sources both and runs
# lnh_main. A case is a function case_NAME (dashes become underscores) that returns 0 for PASS and
# leaves no controller connected. Results go to /dev/ttyS1, which the host reads as a file.
# It is busybox ash (local, sleep 0.1); dash is the nearest shell shellcheck knows. The case_*
# functions are called by name from lnh_run_case.
# shellcheck shell=dash disable=SC2317

log()  { echo "[lnh] $*"; }
res()  { echo "$*"; echo "$*" > /dev/ttyS1; }
fail() { echo "[lnh] FAIL: $*"; return 1; }
secs() { cut -d' ' -f1 /proc/uptime; }

# ---- target discovery in sysfs ----------------------------------------------------------------
# The controller (nvmeX) connected to $LNH_NQN at $LNH_ADDR:$LNH_PORT.
lnh_find_ctrl() {
  local c
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$LNH_NQN" ] || continue
    [ "$(cat "$c/transport")" = tcp ] || continue
    case "$(cat "$c/address")" in "traddr=$LNH_ADDR,trsvcid=$LNH_PORT"*) echo "${c##*/}"; return 0;; esac
  done
  return 1
}
# Namespace IDs the kernel has attached under controller $1 (path devices nvmeXcYnZ under native
# multipath, nvmeXnY without it).
lnh_ctrl_nsids() {
  local d
  for d in /sys/class/nvme/"$1"/nvme*n*; do [ -r "$d/nsid" ] && cat "$d/nsid"; done | sort -n
}
# Block device (/dev/nvmeXnY, the multipath head if any) of namespace $1 of $LNH_NQN.
lnh_ns_dev() {
  local b
  for b in /sys/block/nvme*n*; do
    case "${b##*/}" in nvme*c*n*) continue;; esac
    [ "$(cat "$b/nsid" 2>/dev/null)" = "$1" ] || continue
    [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$LNH_NQN" ] && [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
  done
  return 1
}

# Sets LNH_CTRL=/dev/nvmeX and LNH_DEV=/dev/nvmeXnY (its lowest namespace).
lnh_connect() {
  local i=0 c="" n=""
  LNH_CTRL="" LNH_DEV=""
  log "nvme connect -t tcp -a $LNH_ADDR -s $LNH_PORT -n $LNH_NQN $LNH_CONNECT_OPTS"
  # shellcheck disable=SC2086
  nvme connect -t tcp -a "$LNH_ADDR" -s "$LNH_PORT" -n "$LNH_NQN" $LNH_CONNECT_OPTS || { fail "nvme connect rc=$?"; return 1; }
  while [ "$i" -lt 100 ]; do                       # up to 10 s for the scan to attach a namespace
    c=$(lnh_find_ctrl) && n=$(lnh_ctrl_nsids "$c" | head -n1) && [ -n "$n" ] && LNH_DEV=$(lnh_ns_dev "$n") && break
    sleep 0.1; i=$((i + 1))
  done
  [ -n "$c" ] || { fail "no controller for $LNH_NQN after connect"; return 1; }
  LNH_CTRL=/dev/$c
  [ -n "$LNH_DEV" ] || { fail "controller $c has no namespace block device"; lnh_disconnect; return 1; }
  log "connected: $LNH_CTRL ($(cat "/sys/class/nvme/$c/address")) ns $n = $LNH_DEV," \
      "$(($(cat "/sys/block/${LNH_DEV#/dev/}/size") / 2048)) MiB"
}
lnh_disconnect() {
  local i=0
  nvme disconnect -n "$LNH_NQN" || { fail "nvme disconnect rc=$?"; return 1; }
  while lnh_find_ctrl >/dev/null; do
    [ "$i" -lt 50 ] || { fail "controller still present 5 s after disconnect"; return 1; }
    sleep 0.1; i=$((i + 1))
  done
}

# ---- block I/O with O_DIRECT, 4 KiB blocks -----------------------------------------------------
lnh_write() {   # DEV BLOCK FILE: write FILE at 4 KiB-block BLOCK
  dd if="$3" of="$1" bs=4096 seek="$2" oflag=direct conv=fsync 2>/dev/null || fail "dd write $1 block $2"
}
lnh_verify() {  # DEV BLOCK FILE: read back as many blocks as FILE has and compare
  dd if="$1" of=/tmp/readback bs=4096 skip="$2" count=$(($(wc -c < "$3") / 4096)) iflag=direct 2>/dev/null \
    || { fail "dd read $1 block $2"; return 1; }
  cmp -s "$3" /tmp/readback || { fail "data mismatch on $1 at block $2"; return 1; }
  log "write/read/compare at 4K-block $2: OK"
}
lnh_blocks() { echo $(($(blockdev --getsize64 "$1") / 4096)); }

# ---- hooks: ask the host to do something and wait for it --------------------------------------
# Protocol: the guest writes "LNH-HOOK <id> <name>" on the results port; the host runs
# `--hook-cmd NAME`, then serves "rc=N\n<output>" at http://10.0.2.2:$LNH_HTTP_PORT/hook-<id>.
lnh_hook() {  # NAME; returns the host command's status
  local id i=0 rc
  id=$(($(cat /tmp/lnh-hook-seq 2>/dev/null || echo 0) + 1)); echo "$id" > /tmp/lnh-hook-seq
  res "LNH-HOOK $id $1"
  while [ "$i" -lt $(((LNH_HOOK_TIMEOUT + 10) * 2)) ]; do
    # busybox 1.35's static `wget -T` segfaults: bound it with timeout instead
    timeout 5 wget -q -O /tmp/hook.reply "http://10.0.2.2:$LNH_HTTP_PORT/hook-$id" 2>/dev/null && break
    rm -f /tmp/hook.reply; sleep 0.5; i=$((i + 1))
  done
  [ -s /tmp/hook.reply ] || { fail "hook $1: no answer from the host"; return 1; }
  rc=$(sed -n '1s/^rc=//p' /tmp/hook.reply)
  sed '1d; s/^/[lnh] [host hook] /' /tmp/hook.reply
  [ "$rc" = 0 ] || { fail "hook $1: host command failed rc=$rc"; return 1; }
  # self-target: the target lives in this guest, so the guest does the target-side part itself
  if [ "$LNH_SELF_TARGET" = 1 ] && [ "$1" = add-ns ]; then lnh_self_add_ns; fi
}

# ---- self-target: kernel nvmet on the guest's own loopback, RAM disks /dev/ram0..3 ------------
# (--serve-target uses the same set-up on 10.0.2.15 with one RAM disk; both of LNH_TARGET_SIZE MiB)
NVMET=/sys/kernel/config/nvmet
lnh_self_add_ns() {  # next free nsid N, backed by /dev/ram(N-1)
  local s="$NVMET/subsystems/$LNH_NQN" n=1
  while [ -d "$s/namespaces/$n" ]; do n=$((n + 1)); done
  [ -b "/dev/ram$((n - 1))" ] || { fail "self-target: no RAM disk left for ns $n"; return 1; }
  if ! { mkdir "$s/namespaces/$n" && printf %s "/dev/ram$((n - 1))" > "$s/namespaces/$n/device_path" \
         && echo 1 > "$s/namespaces/$n/enable"; }; then fail "self-target: enabling ns $n"; return 1; fi
  log "self-target: added ns $n (/dev/ram$((n - 1)))"
}
lnh_self_target() {
  local s="$NVMET/subsystems/$LNH_NQN" p="$NVMET/ports/1" nr=4
  [ "$LNH_SERVE" = 1 ] && nr=1
  modprobe nvmet && modprobe nvmet-tcp && modprobe brd rd_nr="$nr" rd_size=$((LNH_TARGET_SIZE * 1024)) max_part=0 \
    || return 1
  mkdir "$s" && echo 1 > "$s/attr_allow_any_host" || return 1
  lnh_self_add_ns || return 1
  mkdir "$p" && echo tcp > "$p/addr_trtype" && echo ipv4 > "$p/addr_adrfam" \
    && echo "$LNH_ADDR" > "$p/addr_traddr" && echo "$LNH_PORT" > "$p/addr_trsvcid" \
    && ln -s "$s" "$p/subsystems/$LNH_NQN" || return 1
  log "self-target: nvmet $LNH_NQN on tcp $LNH_ADDR:$LNH_PORT"
}

# ---- serve-target: nvmet on 10.0.2.15, which the host reaches through QEMU's hostfwd -----------
# nvmet's discovery controller answers on the same port by default; its log says 10.0.2.15.
# The host asks for the power-off by writing "stop" on the control port (ttyS2, a FIFO on the host).
lnh_serve() {
  local cmd got=""
  lnh_self_target || { lnh_dmesg; res "LNH-DONE FAIL serve-target setup"; poweroff -f; }
  res "LNH-TARGET-LISTENING $LNH_ADDR:$LNH_PORT nqn=$LNH_NQN ns1=/dev/ram0 size_mib=$LNH_TARGET_SIZE"
  stty -F /dev/ttyS2 -echo 2>/dev/null
  while read -r cmd; do [ "$cmd" = stop ] && { got=1; break; }; done < /dev/ttyS2
  if [ -z "$got" ]; then log "serve: no control port (ttyS2): serving until QEMU is stopped"; while :; do sleep 3600; done; fi
  log "serve: stop requested by the host"
  lnh_dmesg
  res "LNH-DONE PASS serve-target stopped"
  poweroff -f
}

# ---- cases ------------------------------------------------------------------------------------
case_discover() {
  local out rc=0
  out=$(nvme discover -t tcp -a "$LNH_ADDR" -s "$LNH_PORT" 2>&1) || rc=$?
  [ "$rc" = 0 ] || { echo "$out"; fail "nvme discover rc=$rc"; return 1; }
  echo "$out"
  echo "$out" | awk -v n="$LNH_NQN" '$1 == "subnqn:" && $2 == n {f=1} END {exit !f}' \
    || { fail "$LNH_NQN is not in the discovery log"; return 1; }
}

case_connect() {
  local rc=0 oncs nlb mid
  lnh_connect || return 1
  nvme list
  nvme id-ctrl "$LNH_CTRL" > /tmp/id-ctrl || { fail "id-ctrl"; rc=1; }
  grep -E '^(vid|sn|mn|fr|mdts|cntlid|ver|oncs|nn|subnqn|ioccsz|iorcsz|sgls) ' /tmp/id-ctrl
  if nvme id-ns "$LNH_DEV" > /tmp/id-ns; then head -n 12 /tmp/id-ns; else fail "id-ns"; rc=1; fi
  nvme get-feature "$LNH_CTRL" -f 7 -H || { fail "get-feature 7 (number of queues)"; rc=1; }
  if nvme smart-log "$LNH_CTRL" > /tmp/smart; then head -n 6 /tmp/smart; else fail "smart-log"; rc=1; fi
  # 16 random 4 KiB blocks at block 0 and mid-device, O_DIRECT, read back, compare
  dd if=/dev/urandom of=/tmp/pat bs=4096 count=16 2>/dev/null
  mid=$(($(lnh_blocks "$LNH_DEV") / 2))
  for b in 0 "$mid"; do lnh_write "$LNH_DEV" "$b" /tmp/pat && lnh_verify "$LNH_DEV" "$b" /tmp/pat || rc=1; done
  # NVMe Compare, when nvme-cli has it and the controller says so (ONCS bit 0)
  oncs=$(awk '$1 == "oncs" {print $3}' /tmp/id-ctrl)
  if ! nvme help 2>&1 | grep -qw compare; then log "nvme-cli has no 'compare': compare skipped"
  elif [ $((${oncs:-0} & 1)) = 0 ]; then log "controller lacks Compare (oncs=$oncs): compare skipped"
  else
    nlb=$((4096 / $(cat "/sys/block/${LNH_DEV#/dev/}/queue/logical_block_size") - 1))
    dd if=/tmp/pat of=/tmp/pat1 bs=4096 count=1 2>/dev/null; dd if=/dev/urandom of=/tmp/other bs=4096 count=1 2>/dev/null
    if nvme compare "$LNH_DEV" -s 0 -c "$nlb" -z 4096 -d /tmp/pat1; then log "compare (same data): OK"
    else fail "nvme compare of identical data"; rc=1; fi
    if nvme compare "$LNH_DEV" -s 0 -c "$nlb" -z 4096 -d /tmp/other 2>&1; then fail "nvme compare of different data succeeded"; rc=1
    else log "compare (different data) failed as it must: OK"; fi
  fi
  nvme flush "$LNH_DEV" || { fail "nvme flush"; rc=1; }
  lnh_disconnect || rc=1
  return "$rc"
}

case_mkfs() {
  local rc=0 i=0
  lnh_connect || return 1
  mkfs.ext4 -F -q "$LNH_DEV" || { fail "mkfs.ext4"; lnh_disconnect; return 1; }
  mkdir -p /mnt/lnh
  mount -t ext4 "$LNH_DEV" /mnt/lnh || { fail "mount"; lnh_disconnect; return 1; }
  dd if=/dev/urandom of=/mnt/lnh/big bs=1M count=8 2>/dev/null
  while [ "$i" -lt 50 ]; do echo "small file $i $(secs)" > /mnt/lnh/small.$i; i=$((i + 1)); done
  mkdir -p /mnt/lnh/dir && cp /mnt/lnh/big /mnt/lnh/dir/copy
  (cd /mnt/lnh && md5sum big small.* dir/copy) > /tmp/sums
  sync; umount /mnt/lnh || { fail "umount"; rc=1; }
  echo 3 > /proc/sys/vm/drop_caches
  e2fsck -fn "$LNH_DEV" || { fail "e2fsck -fn found problems"; rc=1; }
  mount -t ext4 -o ro "$LNH_DEV" /mnt/lnh || { fail "read-only remount"; lnh_disconnect; return 1; }
  if (cd /mnt/lnh && md5sum -c -s /tmp/sums); then log "$(wc -l < /tmp/sums) files verified after remount"
  else fail "checksum mismatch after remount"; rc=1; fi
  umount /mnt/lnh || rc=1
  lnh_disconnect || rc=1
  return "$rc"
}

case_fio() {
  local rc=0
  lnh_connect || return 1
  fio --name=lnh-verify --filename="$LNH_DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
      --size="$LNH_FIO_SIZE" --iodepth="$LNH_FIO_IODEPTH" --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --verify_dump=0 --runtime=60 > /tmp/fio.out 2>&1 || rc=1
  cat /tmp/fio.out
  grep -q 'err= 0' /tmp/fio.out || rc=1
  [ "$rc" = 0 ] || fail "fio verify"
  lnh_disconnect || rc=1
  return "$rc"
}

# Writes verified without pause while a replication relationship establishes: the host's
# repl-start hook starts it and answers once the pair is in sync; fio runs before, during and
# after, and no I/O fails or reads back wrong.
case_repl_fio() {
  local rc=0 pid
  lnh_connect || return 1
  fio --name=lnh-repl --filename="$LNH_DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
      --size="$LNH_FIO_SIZE" --iodepth="$LNH_FIO_IODEPTH" --verify=crc32c --verify_backlog=256 \
      --verify_fatal=1 --verify_dump=0 --time_based --runtime=30 \
      --output-format=normal,terse --terse-version=3 > /tmp/fio.out 2>&1 &
  pid=$!
  sleep 3
  lnh_hook repl-start || rc=1
  wait "$pid" || rc=1
  cat /tmp/fio.out
  grep -q 'err= 0' /tmp/fio.out || rc=1
  # terse v3: 5 error; write 49 iops, 56 clat max (us), 57 clat mean: the longest write is the
  # longest pause the client saw
  grep '^3;' /tmp/fio.out | awk -F';' '{
      printf "LNH-PERF repl-fio write_iops=%d clat_max_us=%d clat_avg_us=%.1f err=%d\n", $49, $56, $57, $5 }' \
    > /tmp/perf.line
  [ -s /tmp/perf.line ] && res "$(cat /tmp/perf.line)"
  [ "$rc" = 0 ] || fail "fio verify while the relationship established"
  lnh_disconnect || rc=1
  return "$rc"
}

case_fio_perf() {  # functional sanity figures only: TCG guest, 2 cores shared with the target
  local rc=0 rw
  lnh_connect || return 1
  for rw in randwrite randread; do
    fio --name="perf-$rw" --filename="$LNH_DEV" --ioengine=libaio --direct=1 --rw="$rw" --bs=4k --iodepth=32 \
        --size="$LNH_FIO_SIZE" --time_based --runtime="$LNH_PERF_RUNTIME" \
        --output-format=normal,terse --terse-version=3 > /tmp/perf.out 2>&1 || { fail "fio $rw"; rc=1; }
    grep -E 'IOPS=|clat \(|err=' /tmp/perf.out
    # terse v3: 5 error; read 7 bw 8 iops 16 clat mean 30 clat p99; write 48 bw 49 iops 57 mean 71 p99
    grep '^3;' /tmp/perf.out | awk -F';' -v rw="$rw" '{
        o = (rw == "randread") ? 0 : 41; p = $(30 + o); sub(/.*=/, "", p)
        printf "LNH-PERF fio-perf %s iops=%d bw_kib=%d clat_avg_us=%.1f clat_p99_us=%s err=%d\n",
               rw, $(8 + o), $(7 + o), $(16 + o), p, $5 }' > /tmp/perf.line
    [ -s /tmp/perf.line ] && res "$(cat /tmp/perf.line)"
    grep -q ' iops=[1-9].* err=0$' /tmp/perf.line || { fail "fio $rw: no IOPS or an error"; rc=1; }
  done
  lnh_disconnect || rc=1
  return "$rc"
}

case_reconnect() {
  local rc=0 last
  lnh_connect || return 1
  dd if=/dev/urandom of=/tmp/pat bs=4096 count=16 2>/dev/null
  last=$(($(lnh_blocks "$LNH_DEV") - 16))
  lnh_write "$LNH_DEV" 0 /tmp/pat && lnh_write "$LNH_DEV" "$last" /tmp/pat || rc=1
  lnh_disconnect || return 1
  lnh_connect || return 1
  lnh_verify "$LNH_DEV" 0 /tmp/pat || rc=1
  lnh_verify "$LNH_DEV" "$last" /tmp/pat || rc=1
  lnh_disconnect || rc=1
  return "$rc"
}

case_ns_add() {
  local rc=0 c before n="" dev="" i=0
  lnh_connect || return 1
  c=${LNH_CTRL#/dev/}
  # the target's active namespace list (Identify CNS 2), not sysfs: a scan may still be running
  before=$(nvme list-ns "$LNH_CTRL" | sed -n 's/.*:0x\([0-9a-fA-F]*\).*/\1/p' | while read -r h; do echo $((0x$h)); done)
  log "namespaces before: $(echo "$before" | tr '\n' ' ')(kernel sees: $(lnh_ctrl_nsids "$c" | tr '\n' ' '))"
  lnh_hook add-ns || { lnh_disconnect; return 1; }
  while [ "$i" -lt 300 ]; do   # 30 s for the AEN, the rescan and the new block device
    for n in $(lnh_ctrl_nsids "$c"); do
      echo "$before" | grep -qx "$n" || { dev=$(lnh_ns_dev "$n") && break 2; }
    done
    sleep 0.1; i=$((i + 1))
  done
  if [ -z "$dev" ]; then fail "no new namespace on $c within 30 s"; rc=1
  else
    log "new namespace $n on $c as $dev after $((i / 10)).$((i % 10)) s"
    dd if=/dev/urandom of=/tmp/pat bs=4096 count=1 2>/dev/null
    lnh_write "$dev" 0 /tmp/pat && lnh_verify "$dev" 0 /tmp/pat || rc=1
  fi
  lnh_disconnect || rc=1
  return "$rc"
}

# ---- runner -----------------------------------------------------------------------------------
# Each case runs in its own session so that a timeout kills it with everything it started.
lnh_run_case() {
  local name="$1" t0 pid wd rc
  t0=$(secs)
  res "LNH-BEGIN $name"
  setsid sh -c ". /lnh/env; . /lnh/cases.sh; case_$(echo "$name" | tr - _)" &
  pid=$!
  ( sleep "$LNH_TEST_TIMEOUT"; log "case $name timed out after ${LNH_TEST_TIMEOUT}s"
    kill -TERM -"$pid"; sleep 3; kill -KILL -"$pid" ) 2>/dev/null &
  wd=$!
  wait "$pid"; rc=$?
  kill "$wd" 2>/dev/null
  umount /mnt/lnh 2>/dev/null
  if lnh_find_ctrl >/dev/null; then
    [ "$rc" != 0 ] || { fail "case $name left a controller connected"; rc=1; }
    nvme disconnect -n "$LNH_NQN" >/dev/null 2>&1
  fi
  if [ "$rc" = 0 ]; then res "LNH-RESULT $name PASS $(awk -v a="$t0" -v b="$(secs)" 'BEGIN{printf "%.2f", b-a}')"
  else res "LNH-RESULT $name FAIL $(awk -v a="$t0" -v b="$(secs)" 'BEGIN{printf "%.2f", b-a}')"; fi
  return "$rc"
}

lnh_dmesg() { echo "LNH-DMESG-BEGIN"; dmesg | grep -iE 'nvme|nvmet' | tail -n 40; echo "LNH-DMESG-END"; }

lnh_main() {
  local c passed=0 failed=0 i=0
  export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/
  mount -t devtmpfs devtmpfs /dev
  exec </dev/console >/dev/console 2>&1
  mount -t proc proc /proc; mount -t sysfs sysfs /sys
  mount -t tmpfs -o mode=1777 tmpfs /tmp; mount -t tmpfs tmpfs /run
  log "guest /init at $(secs) s: kernel $(uname -r), $(nproc) CPUs"
  # the guest's own watchdog, in case something hangs in the kernel
  ( sleep "$LNH_WATCHDOG"; lnh_dmesg; res "LNH-DONE FAIL watchdog after ${LNH_WATCHDOG}s"; poweroff -f ) &
  for m in virtio_pci virtio_net configfs crc32c-intel nvme-tcp ext4; do modprobe "$m" || log "modprobe $m failed"; done
  mount -t configfs configfs /sys/kernel/config
  # network: 10.0.2.15/24 only, NO default route and NO DNS: 10.0.2.2 (host loopback) is all it sees
  ip link set lo up
  while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  if ! ip addr add 10.0.2.15/24 dev eth0 || ! ip link set eth0 up; then res "LNH-DONE FAIL network"; poweroff -f; fi
  # without these, nvme-cli derives a host NQN from the (absent) DMI UUID and a random host ID
  mkdir -p /etc/nvme; echo "$LNH_HOSTNQN" > /etc/nvme/hostnqn; echo "$LNH_HOSTID" > /etc/nvme/hostid
  res "LNH-INFO kernel=$(uname -r) cpus=$(nproc) $(nvme version | head -n1 | tr ' ' _) hostnqn=$LNH_HOSTNQN"
  if [ "$LNH_SELF_TARGET" = 1 ]; then lnh_self_target || { res "LNH-DONE FAIL self-target setup"; poweroff -f; }; fi
  [ "$LNH_SERVE" = 1 ] && lnh_serve
  for c in $LNH_CASES; do
    if lnh_run_case "$c"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  done
  lnh_dmesg
  if [ "$failed" = 0 ]; then res "LNH-DONE PASS passed=$passed failed=0"
  else res "LNH-DONE FAIL passed=$passed failed=$failed"; fi
  sync; poweroff -f
}
