"""Benchmarks: ``python -m lmsgd.bench <suite>``.

Each suite is a sibling module registered in :data:`SUITES` that provides
``add_arguments(parser)`` and ``run(args) -> dict`` (the JSON it also writes to
``--results_dir``). Only ``input`` exists so far; ``step``, ``allreduce``, ``optimizer`` and
``all`` are meant to be added the same way.
"""

# suite name -> module (imported only when that suite runs, so each keeps its own deps).
SUITES: dict[str, str] = {
    "step": "lmsgd.bench.step",
    "allreduce": "lmsgd.bench.allreduce",
    "optimizer": "lmsgd.bench.optimizer",
    "input": "lmsgd.bench.input",
    "all": "lmsgd.bench.all_suites",
}
