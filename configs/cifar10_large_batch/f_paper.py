"""(f) Batch 1,280: the paper — RMSprop warm-up + slow-start + batch-statistics normalization.

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/f_paper.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: 8 devices (8 GPUs, or 8 simulated CPU devices): 160 images per device, whose own
statistics normalize them. On fewer devices the statistics span more images (not the recipe).
Recipe (Akiba et al. 2017, docs/recipe.md): RMSprop warm-up handing over to momentum SGD (alpha_sgd
= 0.5 at epoch 10, 1 at 12.5; eta_rmsprop 3e-4), slow-start schedule 0.5 / 0.075 / 0.01 /
0.001 x (0.1 x 1280 / 256 = 0.5) at epochs 40 / 70 / 85 of 90, weight decay 1e-4 on every
parameter, batch-statistics-only BN per device (no moving averages; evaluation uses the last
training batch's statistics averaged over the devices), float16 all-reduce.
Expected: quick preset (reduced: ResNet-8, 16 px, 24 epochs) measured in docs/results.md's
large-batch section; full preset not measured here.
"""

from lmsgd.experiments.presets import cifar10_config, finalize


def get_config(preset="full"):
    config = cifar10_config()
    config.model.norm_mode = "batch_stats"
    config.model.bn_group_size = 1  # per device
    config.model.eval_stats_batches = 1  # last training batch, averaged over devices
    config.optimizer.name = "rmsprop_warmup"
    config.optimizer.schedule = "slow_start"
    config.optimizer.base_learning_rate = None  # linear scaling rule: 0.1 x batch / 256
    config.allreduce.dtype = "float16"
    return finalize(config, preset)
