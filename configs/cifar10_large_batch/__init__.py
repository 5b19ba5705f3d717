"""The CIFAR-10 large-batch recipes (a)-(g) of `python -m lmsgd.experiments.large_batch`."""
