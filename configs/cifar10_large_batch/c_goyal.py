"""(c) Batch 1,280: Goyal et al. 2017, linear warm-up + step decay (the usual baseline).

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/c_goyal.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: one GPU, or 8 simulated CPU devices (160 images per device).
Recipe: momentum 0.9, eta = 0.1 x 1280 / 256 = 0.5 reached by a linear warm-up over 5 epochs,
x0.1 at epochs 30 / 60 / 80 of 90, weight decay 1e-4 not on BN and biases, BN per device (160
images) with moving averages for evaluation (as Goyal et al.), float32 all-reduce.
Expected: quick preset (reduced: ResNet-8, 16 px, 24 epochs) measured in docs/results.md's
large-batch section; full preset not measured here.
"""

from lmsgd.experiments.presets import cifar10_config, finalize


def get_config(preset="full"):
    config = cifar10_config()
    config.model.norm_mode = "moving_average"
    config.optimizer.name = "momentum"
    config.optimizer.schedule = "goyal"
    config.optimizer.goyal.warmup_epochs = 5.0
    config.optimizer.base_learning_rate = None  # linear scaling rule: 0.1 x batch / 256
    config.optimizer.weight_decay_exclude_1d = True
    return finalize(config, preset)
