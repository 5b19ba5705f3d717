"""Baseline: Goyal et al. 2017, momentum SGD with 5 warm-up epochs at a global batch of 8,192.

    python -m lmsgd.train --config configs/imagenet_resnet50_goyal8k.py --workdir DIR \
        --config.data.data_dir=DATA_DIR

Hardware: 256 accelerators x 32 images (the paper: 256 P100s).
Recipe: momentum 0.9 with the rate outside the buffer, eta = 0.1 x 8192 / 256 = 3.2, linear
warm-up over 5 epochs, x0.1 at epochs 30 / 60 / 80, weight decay 1e-4 not applied to BN and
biases, BN with moving averages (as in the paper), float32 all-reduce.
Expected: 76.3% top-1 in 1 hour on 256 P100s (Goyal et al.'s numbers; not measured here).
"""

from lmsgd.config import load_config_file


def get_config():
    config = load_config_file(__file__, "imagenet_resnet50_akiba32k.py")
    config.global_batch_size = 8192
    config.eval_batch_size = 8192
    config.model.norm_mode = "moving_average"
    config.optimizer.name = "momentum"
    config.optimizer.schedule = "goyal"
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.weight_decay_exclude_1d = True
    config.allreduce.dtype = "float32"
    return config
