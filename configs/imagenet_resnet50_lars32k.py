"""Baseline: LARS (You et al. 2017) at a global batch of 32,768 with polynomial decay.

    python -m lmsgd.train --config configs/imagenet_resnet50_lars32k.py --workdir DIR \
        --config.data.data_dir=DATA_DIR

Hardware: as the paper's config (1,024 devices x 32).
Recipe: optax.lars (trust coefficient 0.001, BN and biases excluded from adaptation and
decay), base rate 29 (MLPerf-style LARS reference for 32k), 5 warm-up epochs, polynomial
(power 2) decay to 0 over 90 epochs, weight decay 1e-4 (5e-5 in MLPerf submissions).
Expected: 75.4% top-1 at 32k in 90 epochs (You et al.'s number; not measured here).
"""

from lmsgd.config import load_config_file


def get_config():
    config = load_config_file(__file__, "imagenet_resnet50_akiba32k.py")
    config.optimizer.name = "lars"
    config.optimizer.schedule = "polynomial"
    config.optimizer.base_learning_rate = 29.0
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.polynomial_power = 2.0
    config.allreduce.dtype = "bfloat16"
    return config
