# shellcheck shell=bash
# Shared shell helpers for Baton's mount, benchmark and test scripts.
# Source it; it sets no shell options and installs no traps by itself, so it
# is safe to source from mount.baton (run by mount(8)) as well as from bench.
#
#   . "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
#
# Groups:
#   log / die                         messages prefixed with the script name
#   baton_find_bin                    BATON_BIN, then PATH, then the repo build
#   cleanup_*                         LIFO registry of pids, mounts, dirs; run on EXIT
#   is_mounted / wait_for_mount / unmount_fuse
#   wait_for_port / free_port
#   bg_start / bg_stop / stop_pid     background processes, stopped by pid only
#   fuse_start / fuse_stop            a FUSE daemon in the foreground (-f) plus its mount
#   baton_serve_start / baton_mount_start
#   fio_run                           run one job file of mountscripts/fio with defaults
#
# All functions are safe to call under `set -euo pipefail`.

# Guard against double sourcing: the registry must not be reset mid-run.
if [[ -n "${BATON_LIB_SOURCED:-}" ]]; then return 0; fi
BATON_LIB_SOURCED=1

BATON_SCRIPTS_DIR="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
BATON_REPO_DIR="$(dirname "$BATON_SCRIPTS_DIR")"
BATON_FIO_DIR="$BATON_SCRIPTS_DIR/fio"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- the baton binary --------------------------------------------------------

# Prints the path of the baton executable: $BATON_BIN if set (it must then be
# executable: a typo must not silently fall back to another binary), else
# `baton` on PATH, else the release build of this checkout (mount(8) at boot
# runs with a minimal PATH, so the repo build is the last resort).
baton_find_bin() {
  if [[ -n "${BATON_BIN:-}" ]]; then
    [[ -x "$BATON_BIN" ]] || { log "error: BATON_BIN=$BATON_BIN is not executable"; return 1; }
    printf '%s\n' "$BATON_BIN"
    return 0
  fi
  local p
  if p="$(command -v baton 2>/dev/null)" && [[ -x "$p" ]]; then
    printf '%s\n' "$p"
    return 0
  fi
  p="$BATON_REPO_DIR/.build/release/baton"
  if [[ -x "$p" ]]; then
    printf '%s\n' "$p"
    return 0
  fi
  log "error: no baton binary: set BATON_BIN, put baton on PATH, or run 'swift build -c release' in $BATON_REPO_DIR"
  return 1
}

# --- cleanup registry --------------------------------------------------------
# Entries are "kind<TAB>arg", run last-registered-first, so a mount registered
# after its daemon is unmounted before the daemon is stopped, and a temp dir
# registered first is removed last. Every action is idempotent, so a script may
# tear something down early (then call cleanup_forget) and still rely on the
# EXIT trap for whatever is left after a failure or Ctrl-C.

BATON_CLEANUP=()
# pid -> start time (clock ticks since boot, /proc/PID/stat field 22) when it
# was registered: bash reaps finished background children by itself, so the
# number alone could name an unrelated process later.
declare -A BATON_PID_START=()

cleanup_add_pid() {
  BATON_PID_START[$1]="$(_proc_starttime "$1" || echo gone)"
  BATON_CLEANUP+=("pid	$1")
}
cleanup_add_mount() { BATON_CLEANUP+=("mount	$1"); }
cleanup_add_dir()   { BATON_CLEANUP+=("dir	$1"); }

# Drops an entry (e.g. after the pid was reaped: the number may be reused by
# an unrelated process, which the EXIT trap must then not signal).
cleanup_forget() {
  local kind="$1" arg="$2" i
  for i in "${!BATON_CLEANUP[@]}"; do
    [[ "${BATON_CLEANUP[$i]}" == "$kind	$arg" ]] && unset 'BATON_CLEANUP[i]'
  done
  BATON_CLEANUP=("${BATON_CLEANUP[@]}")
}

cleanup_run() {
  # Runs from traps: keep going whatever fails, and never run twice.
  set +e
  local i entry kind arg
  for ((i = ${#BATON_CLEANUP[@]} - 1; i >= 0; i--)); do
    entry="${BATON_CLEANUP[$i]}"
    kind="${entry%%	*}" arg="${entry#*	}"
    case "$kind" in
      mount) unmount_fuse "$arg" ;;
      pid)   stop_pid "$arg" ;;
      dir)   remove_dir "$arg" ;;
    esac
  done
  BATON_CLEANUP=()
}

# EXIT runs the registry and keeps the exit status; INT/TERM turn into an exit
# (status 130/143) so that EXIT runs exactly once on every path.
cleanup_install_traps() {
  trap 'rc=$?; trap - EXIT; cleanup_run; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# rm -rf, but never across a file system boundary: if an unmount failed, the
# mount's content (a server's data, or a hung FUSE mount) must not be walked.
remove_dir() {
  local d="$1" under
  [[ -n "$d" && "$d" != / && -e "$d" ]] || return 0
  # Into a variable, not `| grep -q`: under pipefail an early grep exit could
  # make the pipeline fail and read as "nothing mounted".
  under="$(mounts_under "$d")"
  if [[ -n "$under" ]]; then
    log "warning: not removing $d: still mounted below it: ${under//$'\n'/ }"
    return 1
  fi
  rm -rf --one-file-system -- "$d"
}

# --- mounts ------------------------------------------------------------------
# Mount state is read from /proc/self/mountinfo only, never by stat() on the
# mount point: a stat on a FUSE mount whose daemon is stopped or dead blocks
# (failover tests stop servers on purpose). So callers pass canonical paths
# (canonicalize before mounting; see canonical_dir).

# mountinfo escapes space, tab, newline and backslash as octal.
_mountinfo_unescape() { printf '%b' "${1//\\/\\0}"; }

# Prints the mount points at or below $1, one a line.
mounts_under() {
  local prefix="${1%/}" _id _pid _dev _root mp _rest
  while read -r _id _pid _dev _root mp _rest; do
    mp="$(_mountinfo_unescape "$mp")"
    [[ "$mp" == "$prefix" || "$mp" == "$prefix"/* ]] && printf '%s\n' "$mp"
  done </proc/self/mountinfo
  return 0
}

is_mounted() {
  local want="${1%/}" _id _pid _dev _root mp _rest
  [[ -n "$want" ]] || want=/
  while read -r _id _pid _dev _root mp _rest; do
    [[ "$(_mountinfo_unescape "$mp")" == "$want" ]] && return 0
  done </proc/self/mountinfo
  return 1
}

# Prints the fusectl connection id of the mount at $1 (the kernel dev_t of the
# super block: major<<20 | minor), for aborting a connection to a hung daemon.
fuse_connection_id() {
  local want="${1%/}" _id _pid dev _root mp _rest
  while read -r _id _pid dev _root mp _rest; do
    if [[ "$(_mountinfo_unescape "$mp")" == "$want" ]]; then
      echo $(( (${dev%%:*} << 20) | ${dev##*:} ))
      return 0
    fi
  done </proc/self/mountinfo
  return 1
}

# Resolves a directory to its canonical path; creates it if missing.
canonical_dir() { mkdir -p -- "$1" && readlink -f -- "$1"; }

# wait_for_mount MOUNTPOINT [TIMEOUT_S=10] [PID]: waits until MOUNTPOINT is a
# mount point; with PID, fails at once if that process has exited (a daemon
# that died on start-up must not cost the whole timeout).
wait_for_mount() {
  local mp="$1" timeout="${2:-10}" pid="${3:-}" deadline
  deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
  until is_mounted "$mp"; do
    if [[ -n "$pid" ]] && ! _pid_alive "$pid"; then
      log "error: process $pid exited before $mp was mounted"
      return 1
    fi
    if (( $(date +%s%N) > deadline )); then
      log "error: $mp not mounted after ${timeout}s"
      return 1
    fi
    sleep 0.1
  done
}

# unmount_fuse MOUNTPOINT: unmounts if mounted. fusermount3 -u first (the
# normal path; the daemon then exits by itself); if that fails or hangs
# (daemon stopped), abort the FUSE connection so nothing can block on it, then
# detach lazily.
unmount_fuse() {
  local mp="${1%/}" conn
  is_mounted "$mp" || return 0
  timeout 10 fusermount3 -u -- "$mp" 2>/dev/null && ! is_mounted "$mp" && return 0
  log "warning: normal unmount of $mp failed; aborting its FUSE connection"
  # fusectl is normally mounted by systemd; containers and minimal VMs lack it.
  if ! is_mounted /sys/fs/fuse/connections && [[ -d /sys/fs/fuse/connections ]]; then
    mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
  fi
  if conn="$(fuse_connection_id "$mp")" && [[ -w "/sys/fs/fuse/connections/$conn/abort" ]]; then
    echo 1 >"/sys/fs/fuse/connections/$conn/abort" 2>/dev/null || true
  fi
  timeout 10 fusermount3 -u -z -- "$mp" 2>/dev/null || timeout 10 umount -l -- "$mp" 2>/dev/null || true
  if is_mounted "$mp"; then
    log "warning: $mp is still mounted"
    return 1
  fi
}

# --- processes ---------------------------------------------------------------

# Prints the start time of a process (field 22 of /proc/PID/stat; the fields
# are counted after the ")" that ends the command name, which may hold spaces).
_proc_starttime() {
  local stat fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  read -r -a fields <<<"${stat##*) }"
  printf '%s\n' "${fields[19]}"
}

# stop_pid PID [GRACE_S=5]: SIGTERM, wait up to GRACE_S, then SIGKILL. By pid
# only: never by name, other people's processes share the machine. A stopped
# process (SIGSTOP in failover tests) gets SIGCONT so it can act on SIGTERM.
# A pid registered with cleanup_add_pid is left alone if the process now
# holding that number started at another time.
stop_pid() {
  local pid="$1" grace="${2:-5}" i
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [[ -n "${BATON_PID_START[$pid]:-}" && "$(_proc_starttime "$pid" || echo gone)" != "${BATON_PID_START[$pid]}" ]]; then
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      _pid_alive "$pid" || break
      sleep 0.1
    done
    if _pid_alive "$pid"; then
      log "warning: pid $pid ignored SIGTERM for ${grace}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # Reap it if it is our child (no effect otherwise), so no zombie remains.
  wait "$pid" 2>/dev/null || true
  return 0
}

# A zombie child answers kill -0, so look at its state too.
_pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# wait_pid_exit PID TIMEOUT_S: waits for a process to go away by itself.
wait_pid_exit() {
  local pid="$1" timeout="${2:-5}" i
  for ((i = 0; i < timeout * 10; i++)); do
    _pid_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# bg_start LOGFILE CMD [ARGS...]: runs CMD in the background with stdout and
# stderr to LOGFILE and stdin from /dev/null, registers it for cleanup, and
# sets BG_PID. (A global, not $(...): a command substitution would make the
# process a grandchild that this shell can neither wait for nor reap.)
bg_start() {
  local logf="$1"
  shift
  "$@" >"$logf" 2>&1 </dev/null &
  BG_PID=$!
  cleanup_add_pid "$BG_PID"
}

# bg_stop PID [GRACE_S=5]: stop_pid, then drop it from the registry.
bg_stop() {
  stop_pid "$1" "${2:-5}"
  cleanup_forget pid "$1"
}

# passthrough_ll_build OUTDIR LOGFILE: compiles libfuse's passthrough_ll
# example from libfuse3-dev's documentation (Debian may ship the examples
# gzipped) into OUTDIR, prints the binary's path: the cost of FUSE itself.
passthrough_ll_build() {
  local src dir f out="$1" logf="$2"
  src="$(dpkg -L libfuse3-dev 2>/dev/null | grep -E '/passthrough_ll\.c(\.gz)?$' | head -n1 || true)"
  [[ -n "$src" ]] || die "passthrough_ll.c not found in libfuse3-dev: run mountscripts/install-deps"
  dir="$(dirname "$src")"
  mkdir -p "$out"
  # passthrough_ll.c includes "passthrough_helpers.h" from its own directory.
  for f in passthrough_ll.c passthrough_helpers.h; do
    if [[ -f "$dir/$f" ]]; then
      cp -- "$dir/$f" "$out/$f"
    elif [[ -f "$dir/$f.gz" ]]; then
      gzip -dc -- "$dir/$f.gz" >"$out/$f"
    else
      die "$dir/$f not found"
    fi
  done
  # shellcheck disable=SC2046 # pkg-config output is meant to be split
  gcc -O2 -Wall -o "$out/passthrough_ll" "$out/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) >"$logf" 2>&1 ||
    die "compiling passthrough_ll failed: see $logf"
  printf '%s\n' "$out/passthrough_ll"
}

# fuse_start LOGFILE MOUNTPOINT CMD [ARGS...]: starts a FUSE daemon that stays
# in the foreground (so its pid is known: pass -f), registers the daemon and
# the mount, waits for the mount (at most FUSE_MOUNT_TIMEOUT s, default 15; at
# once if the daemon dies). MOUNTPOINT must be canonical (canonical_dir).
# Sets BG_PID.
fuse_start() {
  local logf="$1" mp="$2"
  shift 2
  bg_start "$logf" "$@"
  cleanup_add_mount "$mp"
  wait_for_mount "$mp" "${FUSE_MOUNT_TIMEOUT:-15}" "$BG_PID"
}

# fuse_stop MOUNTPOINT PID: unmounts; the daemon then exits by itself (given
# 10 s to flush), else it is stopped.
fuse_stop() {
  unmount_fuse "$1" || true
  cleanup_forget mount "$1"
  wait_pid_exit "$2" 10 || true
  bg_stop "$2"
}

# --- baton daemons -----------------------------------------------------------
# Both use $BATON (set it from baton_find_bin) and set BG_PID.

# baton_serve_start EXPORT DATA_DIR HOST:PORT LOGFILE [ARGS...]: starts `baton serve` (ARGS appended) and
# waits until it accepts connections (at most BATON_START_TIMEOUT s, default 15).
# BATON_SERVE_ARGS (words) go to `baton serve` too, e.g. "--metrics-listen
# 127.0.0.1:0" to measure what the metrics cost.
baton_serve_start() {
  local export="$1" data="$2" listen="$3" logf="$4"
  shift 4
  local -a extra=()
  read -r -a extra <<<"${BATON_SERVE_ARGS:-}"
  mkdir -p -- "$data"
  # The test bed's workloads run as root: root keeps its uid (no root_squash).
  bg_start "$logf" "${BATON:?set BATON from baton_find_bin}" serve \
    --export "$export" --data "$data" --listen "$listen" --squash none "$@" "${extra[@]}"
  wait_for_port "${listen%:*}" "${listen##*:}" "${BATON_START_TIMEOUT:-15}" "$BG_PID"
}

# baton_mount_start SOURCE MOUNTPOINT LOGFILE [OPTIONS]: runs `baton mount -f`
# (foreground, so the pid is the daemon's) and waits for the mount.
baton_mount_start() {
  local source="$1" mp="$2" logf="$3" opts="${4:-}"
  local -a cmd=("${BATON:?set BATON from baton_find_bin}" mount "$source" "$mp")
  [[ -n "$opts" ]] && cmd+=(-o "$opts")
  cmd+=(-f)
  FUSE_MOUNT_TIMEOUT="${BATON_START_TIMEOUT:-15}" fuse_start "$logf" "$mp" "${cmd[@]}"
}

# --- network -----------------------------------------------------------------

# wait_for_port HOST PORT [TIMEOUT_S=10] [PID]: waits until a TCP connect
# succeeds; with PID, fails at once if that process has exited.
wait_for_port() {
  local host="$1" port="$2" timeout="${3:-10}" pid="${4:-}" deadline
  deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
  # The connect runs in a child bash under timeout: /dev/tcp to a blackholed
  # address could otherwise block far beyond the deadline.
  # shellcheck disable=SC2016 # $0 and $1 are expanded by the child bash
  until timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
    if [[ -n "$pid" ]] && ! _pid_alive "$pid"; then
      log "error: process $pid exited before $host:$port accepted connections"
      return 1
    fi
    if (( $(date +%s%N) > deadline )); then
      log "error: $host:$port not accepting connections after ${timeout}s"
      return 1
    fi
    sleep 0.1
  done
}

# Prints a TCP port that was free a moment ago (the kernel picks it). There is
# a small race until the server binds it; fine for tests on one machine.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- fio ---------------------------------------------------------------------
# The job files in mountscripts/fio read their parameters from the
# environment. fio has no ${VAR:-default} syntax (an unset variable expands to
# the empty string), so the defaults live here:
#   FIO_DIR       target directory (required)
#   FIO_SIZE      file size of the data jobs          (default 256m)
#   FIO_RUNTIME   seconds per time-bounded job         (default 10)
#   FIO_NRFILES   files created/stat'ed/deleted        (default 5000)
fio_defaults() {
  export FIO_SIZE="${FIO_SIZE:-256m}"
  export FIO_RUNTIME="${FIO_RUNTIME:-10}"
  export FIO_NRFILES="${FIO_NRFILES:-5000}"
}

# Lists the job names (file names without .fio), one a line: the known ones
# in reading order (data, then metadata, then integrity), then any others.
fio_job_names() {
  local f known=" seq-write seq-read randwrite-fsync randread metadata verify "
  for f in $known; do
    [[ -f "$BATON_FIO_DIR/$f.fio" ]] && printf '%s\n' "$f"
  done
  for f in "$BATON_FIO_DIR"/*.fio; do
    f="${f##*/}"
    f="${f%.fio}"
    [[ "$known" == *" $f "* ]] || printf '%s\n' "$f"
  done
  return 0
}

# fio_run JOB DIR JSON_OUT [extra fio args...]: runs mountscripts/fio/JOB.fio
# against DIR, JSON to JSON_OUT, fio's stderr to JSON_OUT's .log twin.
# Returns fio's exit status (non-zero on IO or verify errors; 124 if it ran
# past FIO_TIMEOUT s, default 3*FIO_RUNTIME+180).
#
# fio runs in the background under `wait`, registered for cleanup: a trapped
# Ctrl-C/SIGTERM interrupts `wait` at once (it would not interrupt a foreground
# child), and the cleanup then stops fio. `timeout` guards against a hung file
# system; it forwards SIGTERM to fio, whose main process stops its job workers.
# --aux-path keeps fio's state files (*-verify.state) beside JSON_OUT instead
# of in the caller's working directory (often the repo root).
fio_run() {
  local job="$1" dir="$2" out="$3" pid rc=0
  shift 3
  [[ -f "$BATON_FIO_DIR/$job.fio" ]] || { log "error: no fio job $job"; return 2; }
  fio_defaults
  FIO_DIR="$dir" timeout --kill-after=30 "${FIO_TIMEOUT:-$((3 * FIO_RUNTIME + 180))}" \
    fio --output-format=json --output="$out" --aux-path="$(dirname -- "$out")" \
    "$@" "$BATON_FIO_DIR/$job.fio" \
    2>"${out%.json}.log" </dev/null &
  pid=$!
  cleanup_add_pid "$pid"
  wait "$pid" || rc=$?
  cleanup_forget pid "$pid"
  return "$rc"
}

# --- a two-node cluster on this machine --------------------------------------
# The cluster of mountscripts/cluster-demo: node agents a (127.0.0.1) and b
# (127.0.0.2, also loopback), each with its own data directory, one export
# preferred on a, sync replication, default timings. Uses $BATON.
#
#   cluster_start WORK [EXPORT=demo] [LOGDIR=WORK]   secret, cluster.toml, agents
#   cluster_status_json                               `baton status --json` of it
#   cluster_field FIELD                               a field of the export's status
#   cluster_wait_served EPOCH [TIMEOUT_S] [OLD_PID]   served at EPOCH and watched
#   cluster_server_pids                               the agents' children (servers)
#   cluster_resume_servers                            SIGCONT them (before any stop)
#   cluster_stop                                      mounts below WORK, agents, servers
#
# Cleanup on a trap path, in this order: stop whatever may hold a server
# SIGSTOPped, cluster_resume_servers, cleanup_run (mounts before agents, as
# registered), then cluster_stop_leftover_servers. (cleanup_run stops the
# agents; an agent stops its servers with SIGTERM and waits for them, which a
# stopped server would never answer: hence SIGCONT first.)

# proc_children PID: prints the pids whose parent is PID (ppid, field 4 of
# /proc/PID/stat, counted after the ")" that ends the command name).
proc_children() {
  local parent="$1" f stat fields pid
  for f in /proc/[0-9]*/stat; do
    { read -r stat <"$f"; } 2>/dev/null || continue
    read -r -a fields <<<"${stat##*) }"
    [[ "${fields[1]:-}" == "$parent" ]] || continue
    pid="${f#/proc/}"
    printf '%s\n' "${pid%/stat}"
  done
  return 0
}

# cluster_start WORK [EXPORT=demo] [LOGDIR=WORK]: writes WORK/secret and
# WORK/cluster.toml (data in WORK/a and WORK/b), starts both agents (logs
# LOGDIR/agent-a.log, agent-b.log; registered for cleanup), and waits until
# the export is served at epoch 1 and watched by its standby (at most
# BATON_START_TIMEOUT s, default 30). WORK must exist and be canonical. With
# BATON_TLS=1 the cluster runs TLS, with certificates by `baton cert` in
# WORK/tls; otherwise plain TCP (plaintext = true). Sets:
#   CLUSTER_WORK CLUSTER_CONFIG CLUSTER_EXPORT CLUSTER_PORT
#   CLUSTER_MONITOR_PORT the export's monitor port (challenges, heartbeats)
#   CLUSTER_SOURCE      what to mount: EXPORT@127.0.0.1:PORT,127.0.0.2:PORT
#   CLUSTER_AGENT_PIDS  (array) agent a, agent b
#   CLUSTER_MOUNT_OPTS  the -o options a mount needs (TLS: cert, key, ca; else empty)
cluster_start() {
  local work="$1" export="${2:-demo}" logdir="${3:-$1}" agent_a agent_b node
  : "${BATON:?set BATON from baton_find_bin}"
  agent_a="$(free_port)" agent_b="$(free_port)"
  CLUSTER_WORK="$work" CLUSTER_EXPORT="$export" CLUSTER_PORT="$(free_port)" CLUSTER_MONITOR_PORT="$(free_port)"
  CLUSTER_CONFIG="$work/cluster.toml"
  # shellcheck disable=SC2034 # for the caller
  CLUSTER_SOURCE="$export@127.0.0.1:$CLUSTER_PORT,127.0.0.2:$CLUSTER_PORT"
  CLUSTER_AGENT_PIDS=()
  (umask 077 && head -c 64 /dev/urandom >"$work/secret")
  local transport="plaintext = true" name
  CLUSTER_MOUNT_OPTS=""
  if [[ "${BATON_TLS:-0}" == 1 ]]; then
    "$BATON" cert ca --out "$work/tls" >/dev/null
    for name in node:a node:b admin:admin client:client; do
      "$BATON" cert issue --ca "$work/tls" --role "${name%%:*}" --name "${name#*:}" --out "$work/tls" >/dev/null
    done
    transport="[tls]
ca = \"$work/tls/ca.pem\"
cert = \"$work/tls/{node}.pem\"
key = \"$work/tls/{node}.key\"
admin_cert = \"$work/tls/admin.pem\"
admin_key = \"$work/tls/admin.key\""
    # shellcheck disable=SC2034 # for the caller
    CLUSTER_MOUNT_OPTS="cert=$work/tls/client.pem,key=$work/tls/client.key,ca=$work/tls/ca.pem"
  fi
  cat >"$CLUSTER_CONFIG" <<TOML
secret_file = "$work/secret"
$transport
[[nodes]]
name = "a"
agent = "127.0.0.1:$agent_a"
data_dir = "$work/a"
[[nodes]]
name = "b"
agent = "127.0.0.2:$agent_b"
data_dir = "$work/b"
[[exports]]
name = "$export"
preferred = "a"
port = $CLUSTER_PORT
monitor_port = $CLUSTER_MONITOR_PORT
# The test bed's workloads run as root: root keeps its uid.
squash = "none"
TOML
  mkdir -p -- "$logdir"
  for node in a b; do
    bg_start "$logdir/agent-$node.log" "$BATON" agent --config "$CLUSTER_CONFIG" --node "$node"
    CLUSTER_AGENT_PIDS+=("$BG_PID")
  done
  cluster_wait_served 1 "${BATON_START_TIMEOUT:-30}"
}

# baton_status_json ARGS...: `baton status --json ARGS` on stdout. Succeeds
# whenever an agent answered: status exits 1 (degraded) or 2 (an export
# unserved) with a full answer, and only 3 (no agent answered) or a timeout
# mean there is none.
baton_status_json() {
  local rc=0
  timeout 10 "${BATON:?set BATON from baton_find_bin}" status --json "$@" || rc=$?
  ((rc <= 2))
}

# cluster_status_json: the cluster's status as JSON on stdout.
cluster_status_json() { baton_status_json --config "${CLUSTER_CONFIG:?no cluster}"; }

# cluster_field FIELD: prints a dotted field (epoch, server.pid, server.node,
# monitor.watching, ...) of the export's entry in the status; empty if absent.
# Fails if the status cannot be had.
cluster_field() {
  local json
  json="$(cluster_status_json)" || return 1
  python3 -c '
import json, sys
name, path = sys.argv[1], sys.argv[2].split(".")
v = next((e for e in json.loads(sys.argv[3]).get("exports", []) if e.get("name") == name), None)
for k in path:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else json.dumps(v) if isinstance(v, bool) else v)
' "$CLUSTER_EXPORT" "$1" "$json"
}

# cluster_wait_served EPOCH [TIMEOUT_S=30] [OLD_PID]: waits until the export is
# served at EPOCH (by another pid than OLD_PID, if given) and its standby
# watches the server (monitor.watching: the replica is in step). Fails at once
# if an agent exits.
cluster_wait_served() {
  local epoch="$1" timeout="${2:-30}" old_pid="${3:-}" deadline pid json
  deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
  while :; do
    if json="$(cluster_status_json 2>/dev/null)" && python3 -c '
import json, sys
name, epoch, old = sys.argv[1], int(sys.argv[2]), sys.argv[3]
e = next((e for e in json.loads(sys.argv[4]).get("exports", []) if e.get("name") == name), {})
server = e.get("server") or {}
ok = (server.get("pid") is not None and str(server.get("pid")) != old and e.get("epoch") == epoch
      and (e.get("monitor") or {}).get("watching") is True)
sys.exit(0 if ok else 1)' "$CLUSTER_EXPORT" "$epoch" "$old_pid" "$json" 2>/dev/null; then
      return 0
    fi
    for pid in "${CLUSTER_AGENT_PIDS[@]}"; do
      _pid_alive "$pid" || { log "error: agent $pid exited (logs beside $CLUSTER_CONFIG)"; return 1; }
    done
    if (( $(date +%s%N) > deadline )); then
      log "error: export $CLUSTER_EXPORT not served at epoch $epoch and watched after ${timeout}s"
      return 1
    fi
    sleep 0.1
  done
}

# cluster_server_pids: the agents' children (their export servers), one a line.
cluster_server_pids() {
  local pid
  for pid in "${CLUSTER_AGENT_PIDS[@]}"; do proc_children "$pid"; done
}

# cluster_resume_servers: SIGCONT to every export server of the cluster's
# agents (a SIGSTOPped one must run again before it can be stopped), and
# remembers them (pid and start time) for cluster_stop_leftover_servers.
declare -A CLUSTER_SERVER_SEEN=()
cluster_resume_servers() {
  local pid
  for pid in $(cluster_server_pids); do
    CLUSTER_SERVER_SEEN[$pid]="$(_proc_starttime "$pid" || echo gone)"
    kill -CONT "$pid" 2>/dev/null || true
  done
  return 0
}

# cluster_stop_leftover_servers: stops (SIGCONT, SIGTERM, then SIGKILL; by pid)
# every server that outlived its agent: those cluster_resume_servers saw, and
# any `baton serve` whose --data lies below CLUSTER_WORK (started by an agent
# in the middle of a swap after that). A pid whose process started at another
# time is someone else's and left alone.
cluster_stop_leftover_servers() {
  local pid f start
  local -a argv
  [[ -n "${CLUSTER_WORK:-}" ]] || return 0
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}" pid="${pid%/cmdline}"
    { mapfile -d '' -t argv <"$f"; } 2>/dev/null || continue
    [[ ${#argv[@]} -ge 2 && "${argv[0]##*/}" == baton* && "${argv[1]}" == serve ]] || continue
    [[ " ${argv[*]} " == *" --data $CLUSTER_WORK/"* ]] || continue
    [[ -n "${CLUSTER_SERVER_SEEN[$pid]:-}" ]] || CLUSTER_SERVER_SEEN[$pid]="$(_proc_starttime "$pid" || echo gone)"
  done
  for pid in "${!CLUSTER_SERVER_SEEN[@]}"; do
    start="${CLUSTER_SERVER_SEEN[$pid]}"
    unset 'CLUSTER_SERVER_SEEN[$pid]'
    [[ "$start" != gone && "$(_proc_starttime "$pid" || echo gone)" == "$start" ]] || continue
    log "warning: export server $pid outlived its agent; stopping it"
    BATON_PID_START[$pid]="$start"
    stop_pid "$pid" 10
    unset 'BATON_PID_START[$pid]'
  done
  return 0
}

# cluster_stop: unmounts every mount below CLUSTER_WORK, resumes the servers,
# stops both agents (each stops its servers), then any server left over.
cluster_stop() {
  local mp pid
  [[ -n "${CLUSTER_WORK:-}" ]] || return 0
  while IFS= read -r mp; do
    [[ -n "$mp" ]] || continue
    unmount_fuse "$mp" || true
    cleanup_forget mount "$mp"
  done < <(mounts_under "$CLUSTER_WORK")
  cluster_resume_servers
  for pid in "${CLUSTER_AGENT_PIDS[@]}"; do bg_stop "$pid" 15; done
  CLUSTER_AGENT_PIDS=()
  cluster_stop_leftover_servers
}
