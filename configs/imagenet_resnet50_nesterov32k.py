"""Baseline: well-tuned Nesterov momentum at 32,768 (Nado et al. 2021).

    python -m lmsgd.train --config configs/imagenet_resnet50_nesterov32k.py --workdir DIR \
        --config.data.data_dir=DATA_DIR

Hardware: as the paper's config (1,024 devices x 32).
Recipe: Nado et al., "A Large Batch Optimizer Reality Check", arXiv 2102.06356. Sources:
  - optimizer Nesterov, linear warm-up then polynomial decay, label smoothing used:
    Nado et al. (main text, ResNet-50 section);
  - ALL NUMBERS ARE GUESSES / UNVERIFIED: base rate 10, 5 warm-up epochs, power 2, momentum
    0.9, weight decay 1e-4 (not on BN and biases), label smoothing 0 (key left at default
    because the tuned value could not be read). Nado et al.'s appendix tables for ResNet-50
    at 32,768 (tuned rate, warm-up, decay, 1 - momentum, weight decay, label smoothing) could
    not be read in this session; replace these with the table's values before citing.
Expected: ~75.9% top-1 (Nado et al.'s number with their tuning; not measured here).
"""

from lmsgd.config import load_config_file


def get_config():
    config = load_config_file(__file__, "imagenet_resnet50_akiba32k.py")
    config.optimizer.name = "nesterov"
    config.optimizer.schedule = "polynomial"
    config.optimizer.base_learning_rate = 10.0
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.weight_decay_exclude_1d = True
    config.allreduce.dtype = "bfloat16"
    return config
