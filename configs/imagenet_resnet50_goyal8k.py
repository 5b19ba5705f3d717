"""Baseline: Goyal et al. 2017, momentum SGD with 5 warm-up epochs at a global batch of 8,192.

    python -m lmsgd.train --config configs/imagenet_resnet50_goyal8k.py --workdir DIR \
        --config.data.data_dir=DATA_DIR

Hardware: 256 accelerators x 32 images (the paper: 256 P100s).
Recipe: Goyal et al., "Accurate, Large Minibatch SGD", arXiv 1706.02677; every value below
is from that paper except where marked:
  - optimizer 'momentum', momentum 0.9, rate outside the buffer (sec. 2.1 / 3 and 5.1);
  - base rate 0.1 x 8192 / 256 = 3.2 via lr_per_256 = 0.1 (linear scaling rule, sec. 2.1);
  - gradual warm-up over 5 epochs from 0.1 to 3.2 (sec. 2.2): warmup_init_factor = 256 / 8192;
  - x0.1 at epochs 30 / 60 / 80, 90 epochs (sec. 5.1);
  - weight decay 1e-4, not applied to the BN gamma/beta (sec. 5.1). The paper says nothing of
    the fc bias; weight_decay_exclude_1d also exempts it (ambiguous in the source);
  - BN gamma = 0 in the last BN of each residual block (sec. 5.1): zero_init_residual;
  - BN over each worker's n = 32 images with moving averages for evaluation (sec. 2.3/5.1);
  - no label smoothing (none in the paper); float32 all-reduce (no key choice in the paper).
Not verified against the paper's text in this session (search returned no full text); the
figures above are the paper's well-known recipe and should be re-checked against sec. 5.1.
Expected: 76.3% top-1 in 1 hour on 256 P100s (Goyal et al.'s numbers; not measured here).
"""

from lmsgd.config import load_config_file


def get_config():
    config = load_config_file(__file__, "imagenet_resnet50_akiba32k.py")
    config.global_batch_size = 8192
    config.eval_batch_size = 8192
    config.num_epochs = 90.0
    config.label_smoothing = 0.0
    config.model.norm_mode = "moving_average"
    config.model.zero_init_residual = True
    config.model.bn_group_size = 1
    config.optimizer.name = "momentum"
    config.optimizer.schedule = "goyal"
    config.optimizer.base_learning_rate = None
    config.optimizer.lr_per_256 = 0.1
    config.optimizer.momentum.momentum = 0.9
    config.optimizer.goyal.warmup_epochs = 5.0
    config.optimizer.goyal.warmup_init_factor = 256 / 8192
    config.optimizer.goyal.boundaries = (30.0, 60.0, 80.0)
    config.optimizer.goyal.decay_factor = 0.1
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_exclude_1d = True
    config.allreduce.dtype = "float32"
    return config
