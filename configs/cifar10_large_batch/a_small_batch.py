"""(a) Small-batch baseline: CIFAR-10 at a batch of 128, momentum SGD, step decay.

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/a_small_batch.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: one GPU, or 8 simulated CPU devices (slow at this batch: 16 images per device).
Recipe: momentum 0.9, eta = 0.2 x 128 / 256 = 0.1 (He et al. 2016), no warm-up, x0.1 at
epochs 30 / 60 / 80 of 90, weight decay 1e-4 on every parameter, BN over the whole batch of
128 with moving averages for evaluation (the single-GPU setting), float32 all-reduce.
Expected: ~91% top-1 with the full preset (He et al. report 91.25% for ResNet-20; not
measured here).
"""

from lmsgd.experiments.presets import SMALL_BATCH, cifar10_config, finalize


def get_config(preset="full"):
    config = cifar10_config()
    config.global_batch_size = SMALL_BATCH
    config.model.norm_mode = "moving_average"
    config.model.bn_group_size = 0  # all 128 images together, as on one GPU
    config.optimizer.name = "momentum"
    config.optimizer.schedule = "goyal"  # x0.1 at 30 / 60 / 80 (x num_epochs / 90)
    config.optimizer.goyal.warmup_epochs = 0.0
    config.optimizer.lr_per_256 = 0.2  # 0.1 at 128
    config.checkpoint.every_steps = 2000
    return finalize(config, preset)
