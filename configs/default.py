"""The main job on a laptop CPU: the paper's recipe on scikit-learn's built-in digits.

    python -m lmsgd.train --config configs/default.py --workdir /tmp/lmsgd_default

Hardware: any CPU (2 cores are enough); 8 simulated CPU devices, so the per-device batch
statistics and the gradient all-reduce run as on a pod. No download.
Recipe: RMSprop warm-up + slow-start schedule + batch-statistics-only normalization (per
device, no moving averages), float16 all-reduce, at a global batch of 256 = 18% of the 1,437
training images (32 per device, as in the paper), so a run takes 200 large steps (the paper:
32,768 = 2.6% of ImageNet, 3,500 steps).
The paper's epoch-valued settings are scaled from 90 epochs to `num_epochs` by one rule
(`lmsgd.optim.scale_epochs`).
Expected (measured, docs/results.md): 97.2-98.6% top-1 on the 360 validation images (seeds
0-2), a few minutes of wall time on 2 cores.
"""

from lmsgd.config import base_config
from lmsgd.optim import scale_epochs


def get_config():
    config = base_config()
    config.seed = 0
    config.num_cpu_devices = 8
    config.num_epochs = 40.0
    config.global_batch_size = 256
    config.eval_batch_size = 256
    config.eval_every_epochs = 5.0

    config.model.name = "cifar_resnet8"
    config.model.width_multiplier = 1.0
    config.model.bn_group_size = 1  # per device: 32 images per statistics group

    config.data.name = "digits"
    config.data.image_size = 16

    config.optimizer = scale_epochs(config.optimizer, config.num_epochs)
    config.optimizer.name = "rmsprop_warmup"
    config.optimizer.schedule = "slow_start"
    config.optimizer.rmsprop_warmup.rmsprop_learning_rate = 3e-3

    config.allreduce.dtype = "float16"
    config.checkpoint.every_steps = 100
    config.logging.every_steps = 5
    return config
