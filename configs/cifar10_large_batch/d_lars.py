"""(d) Batch 1,280: LARS (You et al. 2017) with warm-up and polynomial decay.

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/d_lars.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: one GPU, or 8 simulated CPU devices (160 images per device).
Recipe: optax.lars (trust coefficient 0.001, momentum 0.9, BN and biases excluded from
adaptation and decay), the 32k LARS rate of the MLPerf v0.7 JAX reference (29 at 32,768;
see imagenet_resnet50_lars32k.py, whose v0.6 submission used 31.2) per image, scaled
linearly: eta = 29 / 128 x 1280 / 256 = 1.13 (not tuned for CIFAR), 5 warm-up epochs,
polynomial (power 2) decay to 0 over 90 epochs, weight decay 1e-4, BN per device (160
images) with moving averages for evaluation, float32 all-reduce.
Expected: not measured here (a starting point; LARS rates usually need tuning per task).
"""

from lmsgd.experiments.presets import cifar10_config, finalize


def get_config(preset="full"):
    config = cifar10_config()
    config.model.norm_mode = "moving_average"
    config.optimizer.name = "lars"
    config.optimizer.schedule = "polynomial"
    config.optimizer.polynomial.warmup_epochs = 5.0
    config.optimizer.polynomial.power = 2.0
    config.optimizer.base_learning_rate = None
    config.optimizer.lr_per_256 = 29.0 / 128  # MLPerf v0.7 JAX reference: 29 at 32,768
    return finalize(config, preset)
