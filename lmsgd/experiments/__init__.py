"""Experiments that run several recipes through the training driver and tabulate them.

`python -m lmsgd.experiments.large_batch`: the paper's techniques against large-batch
baselines on CIFAR-10 at the paper's batch-to-dataset ratio (2.6%); `--preset sweep`
(`lmsgd.experiments.sweep`): top-1 against batch size and learning rate, with seeds.

Modules: `presets` (recipes, presets and `finalize`, imported by the config files),
`runner` (one `lmsgd.train` subprocess per run, reuse and resume), `report` (tables and
figures), `large_batch` and `sweep` (the command lines).
"""
