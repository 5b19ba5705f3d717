"""CIFAR-10 ResNet-20 at the paper's batch-to-dataset ratio: 1,280 = 2.6% of 50,000 images.

    python -m lmsgd.train --config configs/cifar10_resnet20_large_batch.py --workdir DIR \
        --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Hardware: one GPU, or 8 (simulated) devices: 160 images per device, BN per device.
Recipe: the paper's — RMSprop warm-up + slow-start (eta_base = 0.1 x 1280 / 256 = 0.5) +
batch-statistics-only normalization per device, float16 all-reduce; 90 epochs (39 steps each,
3,510 steps: the paper's ~3,500).
Expected: see the large-batch experiment in docs/results.md (lmsgd.experiments.large_batch).
"""

import os

from lmsgd.config import base_config
from lmsgd.data.prepare import cache_dir


def get_config():
    config = base_config()
    config.num_cpu_devices = 8
    config.num_epochs = 90.0
    config.global_batch_size = 1280
    config.eval_batch_size = 1000
    config.eval_every_epochs = 5.0
    config.model.name = "cifar_resnet20"
    config.model.norm_mode = "batch_stats"
    config.model.bn_group_size = 1
    config.data.name = "image_folder"
    config.data.data_dir = os.environ.get("LMSGD_CIFAR10_DIR", str(cache_dir() / "cifar10-jpeg"))
    config.data.image_size = 32
    config.data.crop = "resize_crop"  # resize to 36, random 32 crop: like pad-and-crop
    config.optimizer.name = "rmsprop_warmup"
    config.optimizer.schedule = "slow_start"
    config.allreduce.dtype = "float16"
    config.checkpoint.every_steps = 500
    config.logging.every_steps = 20
    return config
