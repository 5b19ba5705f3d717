"""(e) Batch 1,280: Nesterov momentum with warm-up and polynomial decay (Nado et al. 2021).

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/e_nesterov.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: one GPU, or 8 simulated CPU devices (160 images per device).
Recipe: Nesterov momentum 0.9, the ImageNet Nesterov config's rate per image (10 at 32,768)
scaled linearly: eta = 10 / 128 x 1280 / 256 = 0.39, linear warm-up over 5 epochs, then
polynomial (power 2) decay to 0 over 90 epochs, weight decay 1e-4 not on BN and biases, BN per
device (160 images) with moving averages for evaluation, float32 all-reduce. Nado et al. tune
rate, decay and label smoothing per batch size; this is an untuned starting point.
Expected: not measured here.
"""

from lmsgd.experiments.presets import cifar10_config, finalize


def get_config(preset="full"):
    config = cifar10_config()
    config.model.norm_mode = "moving_average"
    config.optimizer.name = "nesterov"
    config.optimizer.schedule = "polynomial"
    config.optimizer.polynomial.warmup_epochs = 5.0
    config.optimizer.polynomial.power = 2.0
    config.optimizer.base_learning_rate = None
    config.optimizer.lr_per_256 = 10.0 / 128  # imagenet_resnet50_nesterov32k.py's 10 at 32,768
    config.optimizer.weight_decay_exclude_1d = True
    return finalize(config, preset)
