#!/usr/bin/env bash
# Trains lmsgd on a Cloud TPU VM pod slice: optionally creates it, installs lmsgd on every
# worker, starts the driver on all workers at once, and follows worker 0's log.
#
# What it does (each step prints its gcloud command first; --dry-run prints only)
#   1. --create: `gcloud compute tpus tpu-vm create $TPU_NAME --accelerator-type
#      $ACCELERATOR_TYPE --version $RUNTIME_VERSION` (add SPOT=1 for a Spot slice).
#   2. install (skip with --no-install), on all workers (`--worker=all`), one of
#        --install=git (default): git clone $REPO_URL (or fetch into the existing clone),
#                   check out $REPO_REF, `pip install -e '.[tpu]'`;
#        --install=scp: tar this checkout (without .git, venvs, caches), copy it to every
#                   worker with `gcloud compute tpus tpu-vm scp --worker=all`, unpack, and
#                   `pip install -e '.[tpu]'`: for uncommitted changes or private repos.
#      The code lands in ~/$REMOTE_DIR on every worker; all workers must run the same code.
#   3. run: `gcloud compute tpus tpu-vm ssh --worker=all --command '...'` starts, detached
#      (nohup, so closing the SSH session does not stop it), on every worker
#        python3 -m lmsgd.train --config $CONFIG --workdir $WORKDIR [extra args]
#      with output to ~/lmsgd_train.log and the pid in ~/lmsgd_train.pid. No JAX_* variables
#      are needed: the driver detects the Cloud TPU VM and jax.distributed.initialize() reads
#      the slice's worker list from the TPU metadata. One process per TPU VM host (4 chips).
#   4. tail (skip with --no-tail): follows ~/lmsgd_train.log of worker 0. Ctrl-C stops the
#      tail only; the training goes on. Rerun with --no-install --no-run to follow it again.
#   --stop sends SIGTERM to the driver on every worker instead (it saves at the next step
#   boundary and exits 0). Preempted (Spot) slices: recreate and rerun with the same WORKDIR;
#   the driver resumes from the last checkpoint there.
#
# Usage
#   launch/tpu_pod.sh [--create] [--install=git|--install=scp|--no-install] [--no-run]
#       [--no-tail] [--stop] [--dry-run] [--] [extra training args...]
#
# Variables
#   TPU_NAME          required: name of the TPU VM (slice)
#   ZONE              required: e.g. us-central2-b (v4), us-east5-a (v5p)
#   PROJECT           the GCP project (default: gcloud's configured project)
#   WORKDIR           required for a run: gs://bucket/path, shared by all workers (checkpoints,
#                     metrics); the same path resumes a run
#   CONFIG            default configs/imagenet_resnet50_akiba32k.py
#   ACCELERATOR_TYPE  for --create: e.g. v4-256 (128 chips), v5p-256 (128 chips); default v4-256
#   RUNTIME_VERSION   for --create; default by generation: v4 tpu-ubuntu2204-base, v5p
#                     v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
#   SPOT              1: create a Spot slice (preemptible)
#   REPO_URL, REPO_REF  for --install=git (REPO_REF default main: a branch, tag or commit)
#   REMOTE_DIR        checkout directory under ~ on the workers (default lmsgd)
#   Arguments after the options (or after --) go to the driver, e.g.
#   --config.data.data_dir=gs://my-bucket/tensorflow_datasets
#
# Example
#   TPU_NAME=akiba ZONE=us-central2-b PROJECT=my-proj ACCELERATOR_TYPE=v4-256 \
#   WORKDIR=gs://my-bucket/runs/akiba32k REPO_URL=https://github.com/me/lmsgd.git \
#     launch/tpu_pod.sh --create -- --config.data.data_dir=gs://my-bucket/tfds
#   # v4-256 = 128 chips on 32 hosts; JAX sees one device per v4/v5p chip (the two
#   # TensorCores act as one, "megacore"), so 128 devices x 256 images = 32,768, which the
#   # config normalizes in groups of 32 images (the paper's BN span) and all-reduces in
#   # float16 over (32 hosts, 4 chips) in two levels. --dry-run starts with this resolved
#   # layout (`python -m lmsgd.layout`); docs/scaling_out.md has the table of slices.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

create=0
install=git
do_install=1
do_run=1
do_tail=1
stop=0
dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    --create) create=1; shift ;;
    --install=git | --install=scp) install="${1#--install=}"; shift ;;
    --install=*) die "--install must be git or scp, got '${1#--install=}'" ;;
    --no-install) do_install=0; shift ;;
    --no-run) do_run=0; shift ;;
    --no-tail) do_tail=0; shift ;;
    --stop) stop=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
if ((dry_run)); then # Placeholders, for the printout only.
  TPU_NAME="${TPU_NAME:-my-tpu}"
  ZONE="${ZONE:-us-central2-b}"
fi
[[ -n "$TPU_NAME" ]] || die "set TPU_NAME"
[[ -n "$ZONE" ]] || die "set ZONE"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-256}"
case "$ACCELERATOR_TYPE" in
  v4-*) default_runtime=tpu-ubuntu2204-base ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$default_runtime}"
CONFIG="${CONFIG:-configs/imagenet_resnet50_akiba32k.py}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-lmsgd}"
[[ "$REMOTE_DIR" =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] ||
  die "REMOTE_DIR must be a plain relative path, got '$REMOTE_DIR'"
log_file="lmsgd_train.log" # under ~ on every worker
pid_file="lmsgd_train.pid"

# Quotes one word for a shell, only where it needs it.
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs (or, with --dry-run, prints) one command.
run() {
  local line="" word
  for word in "$@"; do line+="$(shquote "$word") "; done
  if ((dry_run)); then
    echo "${line% }"
  else
    echo "+ ${line% }" >&2
    "$@"
  fi
}

# Chips (JAX devices) and hosts of ACCELERATOR_TYPE: v4/v5p names count TensorCores (2 per
# chip), v5e/v6e names count chips; 4 chips per host, except single-host 8-chip v5e/v6e.
slice_devices() {
  local n="${ACCELERATOR_TYPE##*-}" chips per_host=4
  [[ "$n" =~ ^[0-9]+$ ]] || return 1
  case "$ACCELERATOR_TYPE" in
    v4-* | v5p-*) chips=$((n / 2)) ;;
    *) chips=$n ;;
  esac
  ((chips != 8)) || [[ "$ACCELERATOR_TYPE" == v4-* || "$ACCELERATOR_TYPE" == v5p-* ]] ||
    per_host=8
  ((chips >= per_host)) || per_host=$chips
  echo "$chips $((chips / per_host))"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/print_layout.sh
source "$here/launch/print_layout.sh"

# --dry-run's first line: the recipe as it lands on the slice, or the driver's refusal.
print_slice_layout() {
  local sizes
  sizes="$(slice_devices)" || {
    echo "# layout: not resolved (unknown slice size in ACCELERATOR_TYPE=$ACCELERATOR_TYPE)"
    return
  }
  print_layout "$here" "${PYTHON:-python3}" "${sizes% *}" "${sizes#* }" \
    ${train_args[@]+"${train_args[@]}"}
}

gcloud_flags=(--zone "$ZONE")
[[ -z "${PROJECT:-}" ]] || gcloud_flags+=(--project "$PROJECT")
ssh_all=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all)

# --dry-run starts with the layout (a refusal prints nothing else).
if ((dry_run && do_run && !stop)); then
  print_slice_layout
fi

if ((stop)); then
  run "${ssh_all[@]}" --command "kill -TERM \"\$(cat ~/$pid_file)\" && echo sent SIGTERM"
  exit 0
fi

if ((create)); then
  create_cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}"
    --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION")
  [[ "${SPOT:-0}" != 1 ]] || create_cmd+=(--spot)
  run "${create_cmd[@]}"
fi

if ((do_install)); then
  pip_install="cd ~/$REMOTE_DIR && python3 -m pip install --quiet --upgrade pip"
  pip_install+=" && python3 -m pip install --quiet -e '.[tpu]'"
  if [[ "$install" == git ]]; then
    if [[ -z "${REPO_URL:-}" ]]; then
      ((dry_run)) || die "--install=git needs REPO_URL (or use --install=scp, or --no-install)"
      REPO_URL=https://github.com/OWNER/lmsgd.git
    fi
    remote="set -e; cd ~; if [ ! -d $REMOTE_DIR/.git ]; then git clone"
    remote+=" $(shquote "$REPO_URL") $REMOTE_DIR; fi;"
    remote+=" git -C $REMOTE_DIR fetch origin $(shquote "$REPO_REF");"
    remote+=" git -C $REMOTE_DIR checkout --force FETCH_HEAD; $pip_install"
  else
    tarball="${TMPDIR:-/tmp}/lmsgd-src-$TPU_NAME.tar.gz"
    run tar -czf "$tarball" -C "$here" --exclude=.git --exclude=.venv --exclude=venv \
      --exclude='workdir*' --exclude=.pytest_cache --exclude=.ruff_cache \
      --exclude=__pycache__ --exclude='*.egg-info' .
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/lmsgd-src.tar.gz" \
      "${gcloud_flags[@]}" --worker=all
    remote="set -e; cd ~; mkdir -p $REMOTE_DIR; tar -xzf lmsgd-src.tar.gz -C $REMOTE_DIR;"
    remote+=" $pip_install"
  fi
  run "${ssh_all[@]}" --command "$remote"
fi

if ((do_run)); then
  if [[ -z "${WORKDIR:-}" ]]; then
    ((dry_run)) || die "set WORKDIR (gs://bucket/path, shared by all workers)"
    WORKDIR=gs://my-bucket/lmsgd/workdir
  fi
  [[ "$WORKDIR" == gs://* ]] ||
    echo "tpu_pod.sh: warning: WORKDIR=$WORKDIR is not on GCS; every worker must see it" >&2
  train=(python3 -m lmsgd.train --config "$CONFIG" --workdir "$WORKDIR" "${train_args[@]}")
  train_line=""
  for word in "${train[@]}"; do train_line+="$(shquote "$word") "; done
  # Refuses to start a second driver while one holds the TPU on that worker.
  remote="cd ~/$REMOTE_DIR && if [ -f ~/$pid_file ] && kill -0 \"\$(cat ~/$pid_file)\""
  remote+=" 2>/dev/null; then echo 'lmsgd.train already running' >&2; exit 1; fi;"
  remote+=" nohup ${train_line}> ~/$log_file 2>&1 < /dev/null & echo \$! > ~/$pid_file"
  run "${ssh_all[@]}" --command "$remote"
fi

if ((do_tail)); then
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=0 \
    --command "tail -n +1 -F ~/$log_file"
fi
