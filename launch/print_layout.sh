# shellcheck shell=bash
# Sourced by the launchers (bash): one definition of their --dry-run's first line.
#
# print_layout ROOT PYTHON DEVICES PROCESSES [TRAIN_ARG ...]
#   Prints the recipe as it lands on DEVICES devices in PROCESSES processes (per-device batch,
#   BN span, all-reduce) as one `# layout: ...` line, from `python -m lmsgd.layout` run in
#   ROOT (the checkout) with $CONFIG; or the driver's one-line refusal on stderr, then exits 2.
#   Only the --config.* arguments among TRAIN_ARGs matter. Where PYTHON cannot run
#   lmsgd.layout (no lmsgd on the submitting machine) it says so and returns 0.
print_layout() {
  local root="$1" python="$2" devices="$3" processes="$4" arg out status=0
  shift 4
  local overrides=()
  for arg in "$@"; do [[ "$arg" != --config.* ]] || overrides+=("$arg"); done
  out="$(cd "$root" && "$python" -m lmsgd.layout --config "$CONFIG" \
    --devices "$devices" --processes "$processes" ${overrides[@]+"${overrides[@]}"} 2>&1)" ||
    status=$?
  if ((status == 2)); then
    echo "$out" >&2
    exit 2
  elif ((status)); then
    echo "# layout: not resolved ($python cannot run lmsgd.layout here)"
  else
    echo "# layout: $out"
  fi
}
