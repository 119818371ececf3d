#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for submitit's AutoExecutor (tests and CI).
#
#   bash scripts/slurm_cluster.sh up       install if missing, configure, start munged/slurmctld/slurmd,
#                                          wait until the node is idle (idempotent)
#   bash scripts/slurm_cluster.sh down     cancel jobs, stop the daemons this script started
#   bash scripts/slurm_cluster.sh status   sinfo + squeue (exit 1 if the controller does not answer)
#
# Needs root (or passwordless sudo). Debian/Ubuntu packages: slurmctld slurmd slurm-client munge.
# It writes /etc/slurm/slurm.conf only when absent or written by this script before (header below);
# MIMBENCH_SLURM_FORCE=1 overwrites a foreign one (kept as slurm.conf.mimbench-bak.<time>).
# Other knobs: MIMBENCH_SLURM_WAIT (seconds to wait for an idle node, default 30),
# MIMBENCH_SLURM_MEM_MB (RealMemory of the node; default ~90% of available memory).
# Pids of the daemons it started are kept in /run/mimbench-slurm/<daemon>.pid; `down` stops only those.
set -uo pipefail

HEADER="# written by mimbench scripts/slurm_cluster.sh"
CONF=/etc/slurm/slurm.conf
STATE_DIR=/run/mimbench-slurm
LOG_DIR=/var/log/slurm
WAIT_S=${MIMBENCH_SLURM_WAIT:-30}
PROG="slurm_cluster.sh"

STARTED=()   # daemons this invocation of `up` started; stopped again if `up` then fails
die() {
  echo "$PROG: $*" >&2
  local d; for d in "${STARTED[@]}"; do stop_pid "$d" >/dev/null 2>&1; done
  exit 1
}
note() { echo "$PROG: $*" >&2; }

need_root() {
  [ "$(id -u)" = 0 ] && return 0
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    exec sudo -n -E bash "$0" "$@"
  fi
  die "cannot start: must run as root (or with passwordless sudo)"
}

node_name() { hostname -s 2>/dev/null || hostname; }

# --- pid bookkeeping (only for daemons this script started) --------------------------------
alive_as() {  # alive_as PID NAME: is PID alive and running NAME?
  local pid=$1 name=$2 comm
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$name" ]
}

ours() {  # ours NAME: prints the pid if NAME was started by this script and still runs
  local f="$STATE_DIR/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null)
  alive_as "$pid" "$1" && { echo "$pid"; return 0; }
  rm -f "$f"; return 1
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

record_pid() {  # record_pid NAME DAEMON_PIDFILE: wait for the daemon's own pid file, copy it
  local name=$1 pf=$2 pid="" i
  for i in $(seq 1 50); do
    if [ -s "$pf" ]; then
      pid=$(tr -dc '0-9' <"$pf")
      alive_as "$pid" "$name" && break
    fi
    pid=""; sleep 0.2
  done
  if [ -z "$pid" ]; then  # daemon without a pid file yet: newest process of that name
    pid=$(pgrep -n -x "$name" 2>/dev/null || true)
  fi
  [ -n "$pid" ] || return 1
  mkdir -p "$STATE_DIR"; echo "$pid" >"$STATE_DIR/$name.pid"
  STARTED=("$name" "${STARTED[@]}")
}

lock() {  # one up/down at a time on this machine (several test sessions may share it);
  # fd 9 holds the lock: daemons are started with 9>&- so they do not keep it
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>/run/mimbench-slurm.lock && flock -w 300 9 || die "another slurm_cluster.sh kept /run/mimbench-slurm.lock for 300s"
}

stop_pid() {  # stop_pid NAME: TERM (then KILL after 15 s) the daemon this script started
  local name=$1 pid i
  pid=$(ours "$name") || { rm -f "$STATE_DIR/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 75); do alive_as "$pid" "$name" || break; sleep 0.2; done
  if alive_as "$pid" "$name"; then note "$name ($pid) did not stop on TERM; killing"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  rm -f "$STATE_DIR/$name.pid"
  echo "stopped $name ($pid)"
}

# --- install ---------------------------------------------------------------------------------
install_packages() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
  command -v slurmd >/dev/null 2>&1 || [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 && command -v srun >/dev/null 2>&1 || missing+=(slurm-client)
  { command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ]; } && command -v munge >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${MIMBENCH_SLURM_NO_INSTALL:-0}" = 1 ] && die "cannot start: missing ${missing[*]} (MIMBENCH_SLURM_NO_INSTALL=1)"
  command -v apt-get >/dev/null 2>&1 || die "cannot start: missing ${missing[*]} and no apt-get to install them"
  note "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}")
  if ! "${apt[@]}" >/tmp/mimbench-slurm-apt.log 2>&1; then
    apt-get update -qq >>/tmp/mimbench-slurm-apt.log 2>&1
    "${apt[@]}" >>/tmp/mimbench-slurm-apt.log 2>&1 || die "cannot start: apt-get install ${missing[*]} failed (see /tmp/mimbench-slurm-apt.log)"
  fi
}

# --- munge -----------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  id munge >/dev/null 2>&1 || die "cannot start: no 'munge' user (is the munge package installed?)"
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    if ! { command -v mungekey >/dev/null 2>&1 && mungekey -c -f -k /etc/munge/munge.key >/dev/null 2>&1; }; then
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none || die "cannot start: could not create /etc/munge/munge.key"
    fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/log/munge; chmod 0400 /etc/munge/munge.key
  chmod 0711 /var/lib/munge; chmod 0755 /run/munge
  if running munged; then
    die "cannot start: munged is running but 'munge -n | unmunge' fails (check /var/log/munge/munged.log)"
  fi
  rm -f /run/munge/munged.pid
  if command -v runuser >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force >/dev/null 2>&1 9>&-
  else
    su -s /bin/sh munge -c "/usr/sbin/munged --force" >/dev/null 2>&1 9>&-
  fi || die "cannot start: munged failed ($(tail -n 1 /var/log/munge/munged.log 2>/dev/null))"
  record_pid munged /run/munge/munged.pid || die "cannot start: munged did not stay up"
  local i; for i in $(seq 1 25); do munge_ok && return 0; sleep 0.2; done
  die "cannot start: munged started but 'munge -n | unmunge' fails"
}

# --- slurm.conf ------------------------------------------------------------------------------
render_conf() {
  local node=$1 cpus mem avail
  cpus=$(nproc)
  if [ -n "${MIMBENCH_SLURM_MEM_MB:-}" ]; then
    mem=$MIMBENCH_SLURM_MEM_MB
  else
    avail=$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo)
    [ -n "$avail" ] || avail=$(awk '/^MemFree:/ {print int($2/1024)}' /proc/meminfo)
    mem=$(( avail * 9 / 10 / 256 * 256 ))   # a bit below what is free, rounded to 256 MB
    [ "$mem" -ge 256 ] || mem=256
  fi
  cat <<EOF
$HEADER
# One-node cluster for mimbench's tests; regenerated by 'slurm_cluster.sh up' when no slurmctld runs.
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=60
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( mem / cpus ))
EOF
}

foreign_conf() { [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qxF "$HEADER"; }
check_conf() {
  if foreign_conf && [ "${MIMBENCH_SLURM_FORCE:-0}" != 1 ]; then
    die "cannot start: $CONF exists and was not written by this script (set MIMBENCH_SLURM_FORCE=1 to replace it)"
  fi
}

CONF_CHANGED=0
write_conf() {
  local node=$1 new
  new=$(render_conf "$node")
  mkdir -p "$(dirname "$CONF")"
  if foreign_conf; then
    [ "${MIMBENCH_SLURM_FORCE:-0}" = 1 ] \
      || die "cannot start: $CONF exists and was not written by this script (set MIMBENCH_SLURM_FORCE=1 to replace it)"
    local bak; bak="$CONF.mimbench-bak.$(date +%Y%m%d%H%M%S)"
    cp -p "$CONF" "$bak" && note "replacing the foreign $CONF (copy kept in $bak)"
  fi
  if [ -e "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then return 0; fi
  printf '%s\n' "$new" >"$CONF.tmp.$$" && chmod 0644 "$CONF.tmp.$$" && mv -f "$CONF.tmp.$$" "$CONF" \
    || die "cannot start: could not write $CONF"
  CONF_CHANGED=1
}

# --- node state ------------------------------------------------------------------------------
node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -n 1; }   # idle, mixed, down*, drained, ...

wait_for_node() {
  local node=$1 deadline=$(( $(date +%s) + WAIT_S )) st resumed=0
  while :; do
    st=$(node_state "$node")
    case "$st" in
      idle|mixed|allocated|completing) echo "$st"; return 0 ;;
      down|drained|draining|drain|fail|failing)
        if [ $resumed -lt 3 ]; then scontrol update nodename="$node" state=resume >/dev/null 2>&1; resumed=$((resumed + 1)); fi ;;
    esac
    [ "$(date +%s)" -ge "$deadline" ] && { echo "${st:-no answer}"; return 1; }
    sleep 0.5
  done
}

last_error() { grep -iE 'error|fatal' "$1" 2>/dev/null | tail -n 1; }

# --- commands --------------------------------------------------------------------------------
cmd_up() {
  need_root up
  local node st t0 ctld_started=0
  t0=$(date +%s.%N)
  node=$(node_name); [ -n "$node" ] || die "cannot start: empty hostname"
  lock
  running slurmctld || check_conf   # refuse before starting anything
  install_packages
  start_munge
  mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR" /run/slurm "$STATE_DIR"

  if ! running slurmctld; then
    write_conf "$node"
    if [ $CONF_CHANGED = 1 ] && ours slurmd >/dev/null; then stop_pid slurmd >/dev/null; fi  # pick up the new node spec
    rm -f /run/slurm/slurmctld.pid
    /usr/sbin/slurmctld -f "$CONF" 9>&- || die "cannot start: slurmctld failed: $(last_error "$LOG_DIR/slurmctld.log")"
    record_pid slurmctld /run/slurm/slurmctld.pid || die "cannot start: slurmctld exited: $(last_error "$LOG_DIR/slurmctld.log")"
    ctld_started=1
  elif [ ! -e "$CONF" ]; then
    die "cannot start: a slurmctld runs but $CONF is missing"
  fi
  local i; for i in $(seq 1 50); do scontrol ping 2>/dev/null | grep -q 'UP' && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q 'UP' || die "cannot start: slurmctld does not answer 'scontrol ping': $(last_error "$LOG_DIR/slurmctld.log")"

  if ! running slurmd; then
    rm -f /run/slurm/slurmd.pid
    /usr/sbin/slurmd -f "$CONF" -N "$node" 9>&- || die "cannot start: slurmd failed: $(last_error "$LOG_DIR/slurmd.log")"
    record_pid slurmd /run/slurm/slurmd.pid || die "cannot start: slurmd exited: $(last_error "$LOG_DIR/slurmd.log")"
  elif [ $ctld_started = 1 ] && [ $CONF_CHANGED = 1 ]; then
    scontrol reconfigure >/dev/null 2>&1 || true
  fi

  if ! st=$(wait_for_node "$node"); then
    local why; why=$(sinfo -h -n "$node" -o %E 2>/dev/null | head -n 1)
    die "cannot start: node $node is '$st' after ${WAIT_S}s${why:+ (reason: $why)}; logs: $LOG_DIR/slurmd.log, $LOG_DIR/slurmctld.log"
  fi
  printf 'slurm up: node %s %s, partition debug (%s CPUs, %s MB; %.1fs)\n' "$node" "$st" \
    "$(sinfo -h -n "$node" -o %c | head -n 1)" "$(sinfo -h -n "$node" -o %m | head -n 1)" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')"
}

cmd_down() {
  need_root down
  local ids i
  lock
  if command -v squeue >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -q UP; then
    ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
      # shellcheck disable=SC2086
      scancel --quiet $ids >/dev/null 2>&1
      for i in $(seq 1 50); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  stop_pid slurmd; stop_pid slurmctld; stop_pid munged
  rmdir "$STATE_DIR" 2>/dev/null || true
  local left=""
  for d in slurmd slurmctld munged; do running "$d" && left="$left $d"; done
  echo "slurm down${left:+ (still running, not started by this script:$left)}"
}

cmd_status() {
  command -v sinfo >/dev/null 2>&1 || { echo "slurm: not installed"; return 1; }
  if ! scontrol ping 2>/dev/null | grep -q UP; then echo "slurm: controller not answering"; return 1; fi
  sinfo -o '%P %a %D %T %c %m %N'
  echo "jobs: $(squeue -h 2>/dev/null | wc -l)"
  squeue -o '%.12i %.9P %.20j %.8u %.2t %.10M %R' 2>/dev/null | head -n 21
  local d; for d in munged slurmctld slurmd; do
    if p=$(ours "$d"); then echo "$d: pid $p (started by $PROG)"; elif running "$d"; then echo "$d: running (not started by $PROG)"; else echo "$d: not running"; fi
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
