"""The paper: ResNet-50 on ImageNet at a global batch of 32,768 (Akiba et al. 2017).

    python -m lmsgd.train --config configs/imagenet_resnet50_akiba32k.py \
        --workdir gs://BUCKET/akiba32k --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The recipe is fixed here, not by the hardware: on any device count the driver keeps BN over
32 images (model.bn_virtual_batch_size=32: ghost BN when a device holds more, e.g. 256 images
per GPU on 16 nodes x 8 GPUs), the float16 wire and, with allreduce.algorithm='auto', a
reduction that stays within 1% of the exact mean (flat up to 8 devices, else two_dimensional
over (hosts, devices per host)); it prints its choice on the model line and refuses in one
line a device count that cannot hold 32 images per device (lmsgd.layout).
Hardware: any slice or cluster whose devices hold at least 32 images each (the paper ran
1,024 P100s x 32 images); docs/scaling_out.md maps other slices and clusters.
Recipe: RMSprop warm-up (beta_center 10, beta_period 5 epochs), slow-start schedule
(0.5 / 0.075 / 0.01 / 0.001 x 12.8 at epochs 40 / 70 / 85), batch-statistics-only
normalization over 32 images, no moving averages, float16 all-reduce, 90 epochs.
Expected: 74.9% top-1 in 15 minutes on 1,024 P100s (the paper's figures). Open questions
about the recipe (what the paper leaves unsaid, what each choice does): docs/recipe.md.

The same 32,768 images per step on fewer devices, with gradient accumulation: a device runs
at most max_micro_batch=256 images at once, so on fewer than 128 devices the driver derives
accumulation_steps (micro-batches per step, ghost BN inside each) and prints it on the model
line; the variants (`--config configs/imagenet_resnet50_akiba32k.py:<variant>`) name two such
layouts with bfloat16 compute:

    variant  devices           x micro-batch x K  (ghost)  = global  BN span
    pod      any (paper 1,024) x min(32768/N, 256) x derived (32) = 32,768  32   (the default)
    gpu8     8 GPUs (one node)    x 256      x 16 (32)     = 32,768  32
    v5p64    32 chips (v5p-64)    x 256      x 4  (32)     = 32,768  32

gpu8 and v5p64 run bfloat16 compute (float32 parameters). `python -m lmsgd.plan --config
configs/imagenet_resnet50_akiba32k.py:gpu8 --target gpu:h100:8x1` (or `:v5p64 --target
tpu:v5p:4x4x2`) compiles the step for the target and estimates its time.
"""

from lmsgd.config import base_config

VARIANTS = {
    # name: accumulation_steps (micro-batches per step; BN stays over 32 images in each).
    # pod: None, derived from max_micro_batch on the devices at hand (1 from 128 devices up).
    "pod": None,
    "gpu8": 16,
    "v5p64": 4,
}


def get_config(variant: str = "pod"):
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    config = base_config()
    config.num_epochs = 90.0
    config.global_batch_size = 32768
    config.eval_batch_size = 32768
    config.eval_every_epochs = 10.0

    config.model.name = "resnet50"
    config.model.dtype = "float32"  # the paper trained in fp32; bfloat16 is the modern choice
    config.model.norm_mode = "batch_stats"
    config.model.bn_group_size = 1  # per device ...
    config.model.bn_virtual_batch_size = 32  # ... over 32 images, however many a device holds
    config.model.eval_stats_batches = 1  # last training batch, averaged over workers

    config.optimizer.name = "rmsprop_warmup"
    config.optimizer.schedule = "slow_start"
    config.optimizer.weight_decay = 1e-4

    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.crop = "inception"

    config.allreduce.dtype = "float16"
    config.allreduce.algorithm = "auto"  # accurate float16 sums at any device count

    config.checkpoint.every_steps = 500
    config.logging.every_steps = 20

    # A device runs at most 256 images at once (ResNet-50, 224 px: ~22 GiB of float32
    # activations, docs/planning.md); more per device become micro-batches (docs/scaling_out.md).
    config.max_micro_batch = 256
    config.accumulation_steps = VARIANTS[variant]
    if variant != "pod":
        config.model.dtype = "bfloat16"
        config.eval_batch_size = 4096  # an evaluation batch that fits without accumulation
    return config
