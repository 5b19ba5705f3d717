#!/usr/bin/env bash
# Renders launch/k8s/{gpu,tpu}-indexed-job.yaml (a headless Service + an Indexed Job running
# `python -m lmsgd.train` in every pod) and applies it with kubectl.
#
# What it does
#   Substitutes the ${VAR} placeholders of the template from the environment (defaults below),
#   checks the values (DNS names, integers, TPU topology vs. hosts x chips), puts the extra
#   training arguments into the container's args, and runs `kubectl apply -f -` on the result.
#   Every pod gets the multi-process contract of the driver:
#     JAX_COORDINATOR_ADDRESS=$JOB_NAME-0.$JOB_NAME:$COORDINATOR_PORT  (pod of index 0, through
#                                                                       the headless Service)
#     JAX_NUM_PROCESSES=<completions>     JAX_PROCESS_ID=<the pod's completion index>
#
# Usage
#   launch/k8s/render.sh [--dry-run | --yaml] gpu|tpu [--] [extra training args...]
#     --dry-run  print the recipe's layout on the job's devices (`# layout: ...`: per-device
#                batch, BN span, all-reduce, from `python -m lmsgd.layout`), then the kubectl
#                command with the rendered YAML (a here-document) instead of running it
#     --yaml     print only the rendered YAML (e.g. to pipe into `kubectl apply -f -` yourself)
#
# Variables (both templates)
#   IMAGE             required: a container image with lmsgd installed at LMSGD_DIR
#                     (pip install -e '.[cuda]' or '.[tpu]')
#   WORKDIR           required: gs://bucket/path or a shared volume path; the same path resumes
#   JOB_NAME          default lmsgd-resnet50 (also the Service name; a DNS label)
#   NAMESPACE         default default
#   CONFIG            default configs/imagenet_resnet50_akiba32k.py
#   LMSGD_DIR         the checkout inside the image, the working directory (default /workspace/lmsgd)
#   COORDINATOR_PORT  default 1234
# gpu: NUM_NODES (default 16), GPUS_PER_NODE (default 8)
# tpu: NUM_HOSTS (default 32), CHIPS_PER_HOST (default 4), TPU_ACCELERATOR (default
#      tpu-v4-podslice; tpu-v5p-slice for v5p), TPU_TOPOLOGY (default 4x4x8)
#   With --dry-run or --yaml, IMAGE and WORKDIR fall back to placeholders.
#
# Example
#   IMAGE=us-docker.pkg.dev/my-proj/lmsgd/lmsgd:cuda WORKDIR=gs://my-bucket/runs/akiba32k \
#   NUM_NODES=16 launch/k8s/render.sh gpu -- --config.data.data_dir=gs://my-bucket/tfds
#   kubectl logs -f -l job-name=lmsgd-resnet50,batch.kubernetes.io/job-completion-index=0
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "render.sh: $*" >&2
  exit 2
}

mode=apply
target=""
extra=()
while (($#)); do
  case "$1" in
    --dry-run) mode=dry-run; shift ;;
    --yaml) mode=yaml; shift ;;
    -h | --help) usage; exit 0 ;;
    gpu | tpu) if [[ -z "$target" ]]; then target="$1"; else extra+=("$1"); fi; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) [[ -n "$target" ]] || die "first name the template: gpu or tpu (see --help)"
      extra+=("$1"); shift ;;
  esac
done
[[ -n "$target" ]] || die "name the template: gpu or tpu (see --help)"
template="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$target-indexed-job.yaml"

if [[ "$mode" != apply ]]; then # Placeholders, for the printout only.
  IMAGE="${IMAGE:-registry.example.com/lmsgd:latest}"
  WORKDIR="${WORKDIR:-gs://my-bucket/lmsgd/workdir}"
fi
[[ -n "${IMAGE:-}" ]] || die "set IMAGE (a container image with lmsgd installed)"
[[ -n "${WORKDIR:-}" ]] || die "set WORKDIR (gs://... or a path on a shared volume)"
JOB_NAME="${JOB_NAME:-lmsgd-resnet50}"
NAMESPACE="${NAMESPACE:-default}"
CONFIG="${CONFIG:-configs/imagenet_resnet50_akiba32k.py}"
LMSGD_DIR="${LMSGD_DIR:-/workspace/lmsgd}"
COORDINATOR_PORT="${COORDINATOR_PORT:-1234}"

names=(JOB_NAME NAMESPACE)
ints=(COORDINATOR_PORT)
strings=(IMAGE WORKDIR CONFIG LMSGD_DIR)
if [[ "$target" == gpu ]]; then
  NUM_NODES="${NUM_NODES:-16}"
  GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
  ints+=(NUM_NODES GPUS_PER_NODE)
else
  NUM_HOSTS="${NUM_HOSTS:-32}"
  CHIPS_PER_HOST="${CHIPS_PER_HOST:-4}"
  TPU_ACCELERATOR="${TPU_ACCELERATOR:-tpu-v4-podslice}"
  TPU_TOPOLOGY="${TPU_TOPOLOGY:-4x4x8}"
  ints+=(NUM_HOSTS CHIPS_PER_HOST)
  names+=(TPU_ACCELERATOR)
  [[ "$TPU_TOPOLOGY" =~ ^[1-9][0-9]*(x[1-9][0-9]*)+$ ]] ||
    die "TPU_TOPOLOGY must look like 4x4x8, got '$TPU_TOPOLOGY'"
  strings+=(TPU_TOPOLOGY)
fi

for var in "${names[@]}"; do
  value="${!var}"
  [[ "$value" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ && ${#value} -le 63 ]] ||
    die "$var must be a DNS label (lowercase letters, digits, '-'), got '${!var}'"
done
for var in "${ints[@]}"; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '${!var}'"
done
if [[ "$target" == tpu ]]; then
  chips=1
  IFS=x read -r -a dims <<<"$TPU_TOPOLOGY"
  for d in "${dims[@]}"; do chips=$((chips * d)); done
  ((NUM_HOSTS * CHIPS_PER_HOST == chips)) ||
    die "TPU_TOPOLOGY=$TPU_TOPOLOGY has $chips chips, but NUM_HOSTS x CHIPS_PER_HOST =" \
      "$NUM_HOSTS x $CHIPS_PER_HOST = $((NUM_HOSTS * CHIPS_PER_HOST))"
fi

# Escapes a value for a double-quoted YAML scalar.
yaml_escape() {
  local s="$1"
  [[ "$s" != *[[:cntrl:]]* ]] || die "control characters are not allowed in '$s'"
  s="${s//\\/\\\\}"
  printf '%s' "${s//\"/\\\"}"
}

declare -A values=()
for var in "${names[@]}" "${ints[@]}"; do values[$var]="${!var}"; done
for var in "${strings[@]}"; do values[$var]="$(yaml_escape "${!var}")"; done

rendered=""
while IFS= read -r line || [[ -n "$line" ]]; do
  if [[ "$line" =~ ^([[:space:]]*)#\ \$\{EXTRA_ARGS\} ]]; then
    indent="${BASH_REMATCH[1]}"
    for arg in "${extra[@]}"; do rendered+="$indent- \"$(yaml_escape "$arg")\""$'\n'; done
    continue
  fi
  for var in "${!values[@]}"; do
    pattern="\${$var}"
    line="${line//"$pattern"/"${values[$var]}"}"
  done
  [[ "$line" != *"\${"* ]] || die "unsubstituted variable in the template line: $line"
  rendered+="$line"$'\n'
done <"$template"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=launch/print_layout.sh
source "$root/launch/print_layout.sh"

apply=(kubectl apply -f -)
case "$mode" in
  yaml) printf '%s' "$rendered" ;;
  dry-run)
    if [[ "$target" == gpu ]]; then # one process per node (pod), one device per GPU
      print_layout "$root" "${PYTHON:-python3}" "$((NUM_NODES * GPUS_PER_NODE))" "$NUM_NODES" \
        ${extra[@]+"${extra[@]}"}
    else # one process per host (pod), one device per chip (v4, v5e, v5p)
      print_layout "$root" "${PYTHON:-python3}" "$((NUM_HOSTS * CHIPS_PER_HOST))" "$NUM_HOSTS" \
        ${extra[@]+"${extra[@]}"}
    fi
    echo "# $target: $template rendered"
    echo "${apply[*]} <<'LMSGD_YAML'"
    printf '%s' "$rendered"
    echo "LMSGD_YAML"
    ;;
  apply)
    printf '%s' "$rendered" | "${apply[@]}"
    echo "render.sh: applied; follow process 0 with" \
      "kubectl logs -f -n $NAMESPACE -l job-name=$JOB_NAME,batch.kubernetes.io/job-completion-index=0" >&2
    ;;
esac
