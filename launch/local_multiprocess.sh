#!/usr/bin/env bash
# Runs N JAX processes of the training driver on this machine, over simulated CPU devices.
#
# What it does
#   Starts NUM_PROCESSES copies of `python -m lmsgd.train <training args>` in the background.
#   Each process gets JAX_PLATFORMS=cpu and
#   XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES_PER_PROCESS, so the job sees
#   NUM_PROCESSES x DEVICES_PER_PROCESS devices in all, and the multi-process contract that the
#   driver reads and passes to jax.distributed.initialize():
#       JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>   (the same for every process)
#       JAX_NUM_PROCESSES=NUM_PROCESSES
#       JAX_PROCESS_ID=0 .. NUM_PROCESSES-1
#   The output of process i goes to LOG_DIR/process_<i>.log (default LOG_DIR: <workdir>/logs,
#   <workdir> taken from the training args' --workdir); process 0's log is also echoed here.
#   For lmsgd.train, -d is also passed on as --config.num_cpu_devices=D (a config's own value
#   would otherwise win over the XLA flag), unless the training args set it themselves.
#   The script waits for all processes and exits non-zero if any fails; when one fails, the
#   others are sent SIGTERM (SIGKILL KILL_AFTER seconds later) so that none is left waiting
#   for its peers. A SIGINT/SIGTERM sent to this script is forwarded to every process as SIGTERM
#   (the driver saves at the next step boundary and exits 0; rerun with the same --workdir to
#   resume); a second one kills them.
#
#   It exercises the same code path as a multi-host run (one process per "host", a disjoint
#   slice of every global batch per process, cross-process collectives over gloo), so it is the
#   way to test multi-host behaviour on a laptop. It is not a way to go faster: all processes
#   share this machine's cores.
#
# Usage
#   launch/local_multiprocess.sh [-n NUM_PROCESSES] [-d DEVICES_PER_PROCESS] [--port PORT]
#       [--module MODULE] [--log-dir DIR] [--quiet] [--dry-run] -- TRAINING_ARGS...
#
#   -n, --num-processes N       processes to start (default 2)
#   -d, --devices-per-process D CPU devices each process simulates (default 2)
#   --port PORT                 coordinator port on 127.0.0.1 (default: a free one)
#   --module MODULE             Python module to run with `python -m` (default lmsgd.train;
#                               the tests point it at a small probe)
#   --log-dir DIR               where process_<i>.log go (default <workdir>/logs)
#   --quiet                     do not echo process 0's log to this terminal
#   --dry-run                   print the commands instead of running them
#   -h, --help                  this text
#
# Environment
#   PYTHON      the interpreter (default: python3, or python if there is no python3)
#   KILL_AFTER  seconds between SIGTERM and SIGKILL for the survivors of a failure (default 30)
#
# Example
#   launch/local_multiprocess.sh -n 2 -d 2 -- --config configs/default.py --workdir /tmp/w
#   # 2 processes x 2 CPU devices = 4 devices; logs in /tmp/w/logs/process_{0,1}.log
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "local_multiprocess.sh: $*" >&2
  exit 2
}

num_processes=2
devices_per_process=2
port=""
module="lmsgd.train"
log_dir=""
quiet=0
dry_run=0

while (($#)); do
  case "$1" in
    -n | --num-processes) num_processes="${2:?$1 needs a value}"; shift 2 ;;
    -d | --devices-per-process) devices_per_process="${2:?$1 needs a value}"; shift 2 ;;
    --port) port="${2:?$1 needs a value}"; shift 2 ;;
    --module) module="${2:?$1 needs a value}"; shift 2 ;;
    --log-dir) log_dir="${2:?$1 needs a value}"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (training arguments go after '--'; see --help)" ;;
  esac
done
train_args=("$@")

[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, got '$num_processes'"
[[ "$devices_per_process" =~ ^[1-9][0-9]*$ ]] ||
  die "-d must be a positive integer, got '$devices_per_process'"

if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi

# The workdir named in the training args (--workdir DIR or --workdir=DIR).
workdir=""
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[i]}" in
    --workdir) workdir="${train_args[i + 1]:-}" ;;
    --workdir=*) workdir="${train_args[i]#--workdir=}" ;;
  esac
done
if [[ -z "$log_dir" ]]; then
  [[ -n "$workdir" ]] || die "no --workdir in the training arguments; pass one (or --log-dir)"
  log_dir="$workdir/logs"
fi

if [[ -z "$port" ]]; then
  if ((dry_run)); then
    port=12345 # Placeholder: a real run asks the OS for a free port.
  else
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi
coordinator="127.0.0.1:$port"

# XLA_FLAGS of the caller, minus any device count of its own, plus ours.
base_xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || base_xla_flags+="$flag "
done
xla_flags="${base_xla_flags}--xla_force_host_platform_device_count=$devices_per_process"

env_for() { # env_for PROCESS_ID -> one VAR=value per line
  printf '%s\n' \
    "JAX_PLATFORMS=cpu" \
    "XLA_FLAGS=$xla_flags" \
    "JAX_COORDINATOR_ADDRESS=$coordinator" \
    "JAX_NUM_PROCESSES=$num_processes" \
    "JAX_PROCESS_ID=$1"
}

# lmsgd.train: a config's num_cpu_devices (configs/default.py sets 8) would override the XLA
# flag, so -d is passed on as --config.num_cpu_devices too, unless the arguments name it.
if [[ "$module" == lmsgd.train && " ${train_args[*]} " != *" --config.num_cpu_devices"* ]]; then
  train_args+=("--config.num_cpu_devices=$devices_per_process")
fi
cmd=("$PYTHON" -m "$module" "${train_args[@]}")

# Quotes one word for a shell, only where it needs it (for the --dry-run printout).
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

if ((dry_run)); then
  echo "# $num_processes processes x $devices_per_process CPU devices," \
    "coordinator $coordinator (a free port is chosen when run for real)"
  echo "mkdir -p $(shquote "$log_dir")"
  for ((p = 0; p < num_processes; p++)); do
    line=""
    while IFS= read -r kv; do line+="${kv%%=*}=$(shquote "${kv#*=}") "; done < <(env_for "$p")
    for word in "${cmd[@]}"; do line+="$(shquote "$word") "; done
    echo "$line> $(shquote "$log_dir/process_$p.log") 2>&1 &"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
tail_pid=""

signal_all() { # signal_all SIGNAL
  local pid
  for pid in "${pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
}

# First SIGINT/SIGTERM: forwarded as SIGTERM (the driver saves and exits 0). Second: SIGKILL.
signals_received=0
# shellcheck disable=SC2329 # invoked by the trap below
on_signal() {
  signals_received=$((signals_received + 1))
  if ((signals_received == 1)); then
    echo "local_multiprocess.sh: forwarding SIGTERM to ${#pids[@]} processes" \
      "(again to kill them)" >&2
    signal_all TERM
  else
    echo "local_multiprocess.sh: killing all processes" >&2
    signal_all KILL
  fi
}
trap on_signal INT TERM

for ((p = 0; p < num_processes; p++)); do
  mapfile -t process_env < <(env_for "$p")
  env "${process_env[@]}" "${cmd[@]}" >"$log_dir/process_$p.log" 2>&1 &
  pids+=("$!")
done
echo "local_multiprocess.sh: started $num_processes processes (pids ${pids[*]})," \
  "coordinator $coordinator, logs in $log_dir/process_<i>.log" >&2

if ((!quiet)); then
  tail -n +1 -f "$log_dir/process_0.log" &
  tail_pid=$!
fi

# Wait for all (polling, so that a forwarded signal never confuses the bookkeeping). On the
# first failure stop the others, which would otherwise block on their peers until the
# coordination service times out: SIGTERM, then SIGKILL after KILL_AFTER seconds (a process
# stuck in a collective with a dead peer never reaches the step boundary where it would stop).
status=0
declare -a exit_codes=()
remaining=$num_processes
stopped_at=""
while ((remaining > 0)); do
  if [[ -n "$stopped_at" ]] && ((SECONDS - stopped_at >= ${KILL_AFTER:-30})); then
    echo "local_multiprocess.sh: still running after ${KILL_AFTER:-30} s; SIGKILL" >&2
    signal_all KILL
    stopped_at=""
  fi
  for ((p = 0; p < num_processes; p++)); do
    [[ -z "${exit_codes[p]:-}" ]] || continue
    kill -0 "${pids[p]}" 2>/dev/null && continue
    rc=0
    wait "${pids[p]}" || rc=$?
    exit_codes[p]=$rc
    remaining=$((remaining - 1))
    echo "local_multiprocess.sh: process $p exited with status $rc" >&2
    if ((rc != 0 && status == 0)); then
      status=$rc
      if ((remaining > 0)); then
        echo "local_multiprocess.sh: stopping the other processes" >&2
        signal_all TERM
        stopped_at=$SECONDS
      fi
    fi
  done
  ((remaining == 0)) || sleep 0.5
done

if [[ -n "$tail_pid" ]]; then
  sleep 0.2 # let tail print the last lines
  kill "$tail_pid" 2>/dev/null || true
  wait "$tail_pid" 2>/dev/null || true
fi
exit "$status"
