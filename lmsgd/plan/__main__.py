"""python -m lmsgd.plan --config CONFIG [--config.key=value ...] --target TARGET
[--json FILE] [--dump_hlo DIR] [--measure N] [--max_batch] [--input_rates FILE] [--workdir DIR]"""

from __future__ import annotations

import os
import sys


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (configs/<name>.py); override keys with --config.key=value",
        lock_config=True,
    )
    flags.DEFINE_string("target", None, "tpu:GEN:TOPOLOGY, gpu:MODEL:GxN, cpu:N or an alias")
    flags.DEFINE_string("json", None, "Also write the plan as JSON to this file.")
    flags.DEFINE_string("dump_hlo", None, "Write the compiled program into this directory.")
    flags.DEFINE_integer("measure", 0, "cpu:N targets: also run this many steps here.")
    flags.DEFINE_bool("max_batch", False, "Bisect (on compiles) for the largest batch that fits.")
    flags.DEFINE_string(
        "input_rates", None,
        "A `python -m lmsgd.bench input` results JSON: its images/s per CPU give the host CPUs "
        "each input path needs (default: the committed lmsgd/plan/input_rates.json).",
    )  # fmt: skip
    flags.DEFINE_string(
        "workdir", None,
        "A `python -m lmsgd.train` run's workdir: print its measured step time (median of the "
        "logged intervals after each start's first) beside the estimate.",
    )  # fmt: skip
    flags.mark_flags_as_required(["config", "target"])  # fmt: skip


def _early_device_count(argv: list[str]) -> None:
    """Simulated CPU devices must be set before JAX initializes its backends."""
    import jax

    target = next((a.split("=", 1)[1] for a in argv if a.startswith("--target=")), None)
    if target is None and "--target" in argv and argv.index("--target") + 1 < len(argv):
        target = argv[argv.index("--target") + 1]
    if not target:
        return
    from lmsgd.plan.planner import GPU_PROXY_DEVICES
    from lmsgd.plan.targets import PlanError, parse_target

    try:
        t = parse_target(target)
    except PlanError:
        return  # reported by main
    if t.kind == "cpu":
        jax.config.update("jax_num_cpu_devices", t.num_devices)
    elif t.kind == "gpu":
        jax.config.update("jax_num_cpu_devices", GPU_PROXY_DEVICES)


def main(argv) -> None:
    from absl import flags

    from lmsgd.config import validate_config
    from lmsgd.plan.planner import plan
    from lmsgd.plan.report import format_plan
    from lmsgd.plan.run_metrics import format_measured, measured_step
    from lmsgd.plan.targets import PlanError

    f = flags.FLAGS
    try:
        if len(argv) > 1:
            raise PlanError(f"unexpected arguments: {argv[1:]}")
        validate_config(f.config)
        measured = measured_step(f.workdir) if f.workdir else None  # a bad one fails first
        result = plan(
            f.config, f.target, max_batch=f.max_batch, measure_steps=f.measure,
            dump_hlo=f.dump_hlo, input_rates=f.input_rates,
        )  # fmt: skip
    except (PlanError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if measured is not None:
        result.run_measured = measured
    print(format_plan(result))
    if measured is not None:
        print("\n".join(format_measured(measured, result.estimate.step_s, result.num_devices)))
    if f.json:
        with open(f.json, "w") as fh:
            fh.write(_with_provenance(result.to_json()))


def _with_provenance(text: str) -> str:
    """The plan's JSON plus what produced it: the command, when, on which host and versions."""
    import datetime
    import json
    import platform

    from lmsgd import hardware

    record = json.loads(text)
    load = hardware.load_average()
    record["provenance"] = {
        "command": " ".join(["python -m lmsgd.plan", *sys.argv[1:]]),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": f"{hardware.cpu_model()}, {os.cpu_count()} cores",
        "load_average_1m": load[0] if load else None,
        "versions": {"python": platform.python_version(),
                     **hardware.versions(("jax", "jaxlib", "libtpu", "jax-cuda12-plugin"))},
    }  # fmt: skip
    return json.dumps(record, indent=1)


def _usage() -> str:
    """--help: the usage line and every flag (absl's own --help exits 1)."""
    from absl import flags

    _define_flags()
    text = flags.FLAGS.module_help(sys.modules[__name__]) or ""
    return f"usage: {__doc__.strip()}\n\nTargets: lmsgd.plan.targets.\n{text}"


if __name__ == "__main__":
    if any(a in ("-h", "--help", "--helpfull") for a in sys.argv[1:]):
        print(_usage())
        sys.exit(0)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Stale libtpu lock files would otherwise fail the next planner process.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from lmsgd.config_files import resolve_argv
    from lmsgd.errors import ConfigError

    try:  # `--config default` names a shipped config, as for lmsgd.train
        sys.argv = resolve_argv(sys.argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # The planner compiles for GPUs and TPUs without owning them (deviceless topologies):
    # nothing here runs on a local accelerator, so JAX need not start one (an installed CUDA
    # plugin on a GPU-less host would otherwise fail to initialise, and deviceless XLA:GPU
    # with it). jax read the environment when lmsgd.plan imported it: set its config.
    if not os.environ.get("JAX_PLATFORMS"):
        import jax

        jax.config.update("jax_platforms", "cpu")
    _early_device_count(sys.argv)
    from absl import app

    _define_flags()
    app.run(main)
