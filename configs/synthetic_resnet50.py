"""Throughput: ResNet-50 on synthetic on-device data (no I/O), bfloat16.

    python -m lmsgd.train --config configs/synthetic_resnet50.py --workdir /tmp/synthetic \
        --config.global_batch_size=2048   # 8 GPUs x 256

Hardware: any accelerator; the images/s line is the figure of merit (accuracy is meaningless).
Expected: see docs/performance.md for what was measured and how.
"""

from lmsgd.config import base_config


def get_config():
    config = base_config()
    config.num_epochs = 1.0
    config.global_batch_size = 256
    config.eval_batch_size = 256
    config.eval_every_epochs = 1.0
    config.model.name = "resnet50"
    config.model.dtype = "bfloat16"
    config.data.name = "synthetic"
    config.data.image_size = 224
    config.data.num_train_examples = 256 * 200
    config.data.num_eval_examples = 256
    config.allreduce.dtype = "bfloat16"
    config.checkpoint.enabled = False
    config.logging.every_steps = 20
    return config
