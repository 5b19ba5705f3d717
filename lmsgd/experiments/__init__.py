"""Experiments that run several recipes through the training driver and tabulate them.

`python -m lmsgd.experiments.large_batch`: the paper's techniques against large-batch
baselines on CIFAR-10 at the paper's batch-to-dataset ratio (2.6%).
"""
