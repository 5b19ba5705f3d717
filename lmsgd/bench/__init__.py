"""Benchmarks: ``python -m lmsgd.bench <suite>``.

Each suite is a sibling module registered in :data:`SUITES` that provides
``add_arguments(parser)`` and ``run(args) -> dict`` (the JSON it also writes to
``--results_dir``):

* ``step``: train-step time, images/s, FLOPs, MFU, memory; ours vs a plain-jit Flax baseline;
* ``allreduce``: gradient all-reduce time and bandwidth per dtype, algorithm and fusion;
* ``optimizer``: rmsprop_warmup update time and state vs stock optax compositions;
* ``input``: input-pipeline images/s;
* ``device``: one command for a GPU box (step, memory vs the planner, all-reduce, training),
  within 8 minutes;
* ``all``: every suite in one run (``--quick``: each in its smallest useful setting).

docs/performance.md has measured tables and the commands that reproduce them.
"""

# suite name -> module (imported only when that suite runs, so each keeps its own deps).
SUITES: dict[str, str] = {
    "step": "lmsgd.bench.step",
    "allreduce": "lmsgd.bench.allreduce",
    "optimizer": "lmsgd.bench.optimizer",
    "input": "lmsgd.bench.input",
    "device": "lmsgd.bench.device",
    "all": "lmsgd.bench.all_suites",
}
