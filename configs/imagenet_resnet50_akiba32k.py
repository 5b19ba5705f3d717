"""The paper: ResNet-50 on ImageNet at a global batch of 32,768 (Akiba et al. 2017).

    python -m lmsgd.train --config configs/imagenet_resnet50_akiba32k.py \
        --workdir gs://BUCKET/akiba32k --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Hardware: 1,024 accelerators x 32 images (the paper: 1,024 P100s), e.g. a TPU v4-2048 /
v5p-2048 slice or 128 nodes of 8 GPUs; see docs/scaling_out.md for other mappings. Fewer,
larger devices keep the global batch; to keep 32 images per BN statistic there, set
model.bn_virtual_batch_size=32 (ghost BN inside a device; model.bn_group_size groups whole
devices and can only make the span larger).
float16 all-reduce on ~1,024 devices: a flat float16 sum of 1,024 terms drifts by up to ~4%
for components the devices agree on; allreduce.algorithm=two_dimensional (or hierarchical)
with allreduce.mesh_shape=(hosts, devices per host) stays below 0.4% (docs/scaling_out.md,
"Scaling of float16 and bfloat16 sums").
Recipe: RMSprop warm-up (beta_center 10, beta_period 5 epochs), slow-start schedule
(0.5 / 0.075 / 0.01 / 0.001 x 12.8 at epochs 40 / 70 / 85), batch-statistics-only
normalization per device (32 images), no moving averages, float16 all-reduce, 90 epochs.
Expected: 74.9% top-1 in 15 minutes on 1,024 P100s (the paper's numbers; not measured here).

The same 32,768 images per step with the paper's 32-image BN statistics on fewer devices
(`--config configs/imagenet_resnet50_akiba32k.py:<variant>`; gradient accumulation,
`accumulation_steps`, with ghost BN inside each micro-batch):

    variant  devices           x micro-batch x K  (ghost)  = global  BN span
    pod      1,024                x 32       x 1  (-)      = 32,768  32   (the default)
    gpu8     8 GPUs (one node)    x 256      x 16 (32)     = 32,768  32
    v5p64    32 chips (v5p-64)    x 256      x 4  (32)     = 32,768  32

Both run bfloat16 compute (float32 parameters). Time per epoch: not measured (no GPU or TPU
was lent to this project); `python -m lmsgd.plan --config
configs/imagenet_resnet50_akiba32k.py:gpu8 --target gpu:h100:8x1` (or `:v5p64 --target
tpu:v5p:4x4x2`) compiles the step for the target and estimates it.
"""

from lmsgd.config import base_config

VARIANTS = {
    # name: (accumulation_steps, ghost batch, mesh_shape, all-reduce algorithm)
    "pod": (1, 0, None, "flat"),
    "gpu8": (16, 32, None, "flat"),
    "v5p64": (4, 32, None, "flat"),
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
    config.model.bn_group_size = 1  # 32 images per device
    config.model.eval_stats_batches = 1  # last training batch, averaged over workers

    config.optimizer.name = "rmsprop_warmup"
    config.optimizer.schedule = "slow_start"
    config.optimizer.weight_decay = 1e-4

    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.crop = "inception"

    config.allreduce.dtype = "float16"
    config.allreduce.algorithm = "flat"  # at ~1,024 devices: two_dimensional (see above)

    config.checkpoint.every_steps = 500
    config.logging.every_steps = 20

    accumulation, ghost, mesh_shape, algorithm = VARIANTS[variant]
    config.accumulation_steps = accumulation
    config.model.bn_virtual_batch_size = ghost
    config.allreduce.mesh_shape = mesh_shape
    config.allreduce.algorithm = algorithm
    if variant != "pod":
        config.model.dtype = "bfloat16"
        config.eval_batch_size = 4096  # an evaluation batch that fits without accumulation
    return config
