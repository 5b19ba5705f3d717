"""CIFAR-10 ResNet-20 at a small batch (128): the accuracy a large batch must keep.

    python -m lmsgd.data.prepare cifar10      # prints the folder; once
    python -m lmsgd.train --config configs/cifar10_resnet20_small_batch.py --workdir DIR \
        --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Hardware: one GPU (8 simulated CPU devices also work, slowly: 16 images per device).
Recipe: momentum SGD 0.9, eta = 0.1 (linear scaling rule at 128: 0.05; He et al. used 0.1),
x0.1 at epochs 30 / 60 / 80 of 90 without warm-up, weight decay 1e-4, BN with moving averages
(the standard small-batch setting), float32 all-reduce.
Expected: ~91-92% top-1 (He et al. 2016 report 91.25% for ResNet-20; not measured here).
"""

import os

from lmsgd.config import base_config
from lmsgd.data.prepare import cache_dir


def get_config():
    config = base_config()
    config.num_cpu_devices = 8
    config.num_epochs = 90.0
    config.global_batch_size = 128
    config.eval_batch_size = 1000
    config.eval_every_epochs = 5.0
    config.model.name = "cifar_resnet20"
    config.model.norm_mode = "moving_average"
    config.data.name = "image_folder"
    config.data.data_dir = os.environ.get("LMSGD_CIFAR10_DIR", str(cache_dir() / "cifar10-jpeg"))
    config.data.image_size = 32
    config.data.crop = "resize_crop"  # resize to 36, random 32 crop: like pad-and-crop
    config.optimizer.name = "momentum"
    config.optimizer.schedule = "goyal"
    config.optimizer.base_learning_rate = 0.1
    config.optimizer.goyal.warmup_epochs = 0.0
    config.checkpoint.every_steps = 2000
    config.logging.every_steps = 100
    return config
