"""Baseline: LARS (You et al. 2017) at a global batch of 32,768 with polynomial decay.

    python -m lmsgd.train --config configs/imagenet_resnet50_lars32k.py --workdir DIR \
        --config.data.data_dir=DATA_DIR

Hardware: as the paper's config (1,024 devices x 32).
Recipe: Google's MLPerf v0.6 closed-division ResNet-50 run at global batch 32,768 on TPU-v3-1024
(Kumar et al. 2019, arXiv 1909.09756; LARS from You et al., arXiv 1708.03888). Sources, all in
mlcommons/training_results_v0.6 under Google/ ("log" = results/tpu-v3-1024/resnet/result_0.txt,
"flags" = benchmarks/resnet/tpu-v3-1024/run_and_time.sh, "lars_util" =
benchmarks/resnet/implementations/tpu-v3-1024-resnet/resnet/lars_util.py):
  - base rate 31.2 (global): log opt_base_learning_rate, flags --lars_base_learning_rate=31.2;
  - linear warm-up from 0 over 25 epochs: log opt_learning_rate_warmup_epochs, flags, lars_util;
  - polynomial decay, power 2, to an absolute 1e-4 (end factor 1e-4 / 31.2): log
    lars_opt_learning_rate_decay_poly_power, lars_opt_end_learning_rate; lars_util;
  - 2,983 steps (flags --train_steps; 76.3 epochs of 1,281,167 images), here 2,983 / 39 epochs of
    this project's 39 steps (1,281,167 // 32,768) so the run is exactly 2,983 steps. The
    submission's warm-up is 977 steps, this config's round(25 x 39) = 975;
  - weight decay 1e-4: log lars_opt_weight_decay, flags. Caveat: that submission also added
    1e-4 * l2_loss to the loss for non-BN variables (resnet_main.py of the same round, e.g.
    implementations/tpu-v3-512-resnet/resnet/resnet_main.py), i.e. LARS saw 2e-4 on kernels;
    v0.7 removed the loss term under LARS. This config applies 1e-4 once;
  - momentum 0.9: default of --momentum in that resnet_main.py (not set in the flags);
  - LARS epsilon 1e-5: log lars_epsilon, flags --lars_epsilon=1e-05;
  - trust coefficient 0.001: tf.contrib.opt.LARSOptimizer's default eeta (lars_util passes none;
    tensorflow/docs site/en/api_docs/python/tf/contrib/opt/LARSOptimizer.md);
  - BN and biases excluded from adaptation and decay: lars_util skip_list=['batch_normalization',
    'bias'];
  - label smoothing 0.1: flags --label_smoothing=0.1. (The log's model_bn_span is 32, as here.)
Not identical: optax.lars divides by ||g + wd w|| + eps, TF's LARS by ||g|| + wd ||w|| + eps.
Alternative 32k LARS recipe, the one Nado et al. 2021 compare against (2,512 steps): MLPerf v0.7
JAX code defaults, mlcommons/training_results_v0.7
Google/benchmarks/resnet/implementations/resnet-research-JAX-tpu-v3-8192/train.py (rate 29,
18 warm-up epochs, momentum 0.929, 64 epochs of 39.25 steps, epsilon 0); not run at 32k there.
Expected: MLPerf's 75.9% target; the log reaches 75.99% top-1 at epoch 76 (not measured here).
"""

from lmsgd.config import load_config_file


def get_config():
    config = load_config_file(__file__, "imagenet_resnet50_akiba32k.py")
    config.num_epochs = 2983 / 39  # 2,983 steps at 39 steps per epoch
    config.label_smoothing = 0.1
    config.optimizer.name = "lars"
    config.optimizer.schedule = "polynomial"
    config.optimizer.base_learning_rate = 31.2
    config.optimizer.polynomial.warmup_epochs = 25.0
    config.optimizer.polynomial.power = 2.0
    config.optimizer.polynomial.end_factor = 1e-4 / 31.2
    config.optimizer.weight_decay = 1e-4
    config.optimizer.lars.momentum = 0.9
    config.optimizer.lars.trust_coefficient = 0.001
    config.optimizer.lars.eps = 1e-5
    config.optimizer.lars.exclude_1d = True
    config.allreduce.dtype = "bfloat16"
    return config
