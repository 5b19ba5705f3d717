# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring lmsgd: extremely large minibatch SGD in JAX
#
# A tour of this reference implementation of Akiba, Suzuki & Fukuda (2017), *Extremely Large
# Minibatch SGD: Training ResNet-50 on ImageNet in 15 Minutes*, for an ML researcher meeting
# the codebase. Everything runs on a laptop CPU in about two minutes, with 8 *simulated*
# devices so that per-device batch statistics and the gradient all-reduce behave as on a pod.
#
# 1. **Schedules**: the slow-start learning rate and the RMSprop to SGD hand-over `alpha_sgd`.
# 2. **A short training run** on scikit-learn's built-in digits, plotted from `metrics.jsonl`.
# 3. **Batch normalization without moving averages**: last-batch statistics vs "precise BN"
#    vs moving averages.
# 4. **The compiled step's collectives**: what XLA really sends for each all-reduce setting.
#
# The recipe as this repository reads it (with sources and open questions) is in
# [`docs/recipe.md`](../docs/recipe.md); the sections referred to below are its.

# %% [markdown]
# ## Setup
#
# Where lmsgd is installed (a checkout with `pip install -e .`) this cell does nothing.
# Elsewhere, e.g. on Colab, it pip-installs the package from `PIP_SPEC` (a git URL or a
# wheel); the configs ship inside the package, so nothing else is needed.

# %%
import importlib.util
import os
import pathlib

from IPython import get_ipython

# Your copy's git URL (or a wheel's path); set LMSGD_PIP_SPEC or edit this line.
PIP_SPEC = os.environ.get("LMSGD_PIP_SPEC", "git+https://github.com/OWNER/lmsgd.git")
if importlib.util.find_spec("lmsgd") is None:  # not installed: install it (Colab)
    get_ipython().run_line_magic("pip", f'install -q "{PIP_SPEC}"')

# %% [markdown]
# Simulate 8 CPU devices. This must happen before JAX creates its backends, i.e. right after
# the first `import jax` and before anything runs on a device (on Colab: in a fresh runtime).
# The notebook pins JAX to the CPU so that the 8-device mesh exists on any machine.

# %%
os.environ["JAX_PLATFORMS"] = "cpu"

import lmsgd  # noqa: E402, F401  (first: a quiet start-up, see lmsgd/_quiet.py)

# isort: split
import jax  # noqa: E402

try:
    jax.config.update("jax_num_cpu_devices", 8)
except RuntimeError as error:  # backends already up (the kernel ran JAX code before)
    print(f"could not set 8 devices ({error}); restart the kernel if the count below is not 8")

import json  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import matplotlib.figure  # noqa: E402
import numpy as np  # noqa: E402
from IPython.display import Markdown, display  # noqa: E402

import lmsgd.config  # noqa: E402
import lmsgd.config_files  # noqa: E402
import lmsgd.evaluate  # noqa: E402
import lmsgd.models  # noqa: E402
import lmsgd.optim  # noqa: E402
import lmsgd.parallel  # noqa: E402
import lmsgd.run  # noqa: E402
import lmsgd.step  # noqa: E402
import lmsgd.train  # noqa: E402

get_ipython().run_line_magic("matplotlib", "inline")
print(jax.device_count(), "devices:", jax.devices())
assert jax.device_count() == 8, "restart the kernel and run from the top"

T_START = time.perf_counter()
CONFIGS = lmsgd.config_files.config_dir()  # configs/ of the checkout, or of the installed wheel
print("configs:", CONFIGS)


def load_config(name: str):
    """A shipped config (`default.py` = configs/default.py) via lmsgd's loader, which calls
    the file's get_config()."""
    return lmsgd.config.load_config_file(lmsgd.config_files.resolve(name))


# %% [markdown]
# ## 1. The slow-start schedule and the RMSprop to SGD hand-over
#
# The paper's optimizer (docs/recipe.md s.1) starts as RMSprop and hands over smoothly to momentum
# SGD: each step is `alpha_sgd * eta * g` (SGD part) plus `(1 - alpha_sgd) * eta_rmsprop *
# g / (sqrt(m) + eps)` (RMSprop part), with `alpha_sgd` rising from ~0 to 1 around epoch
# `beta_center = 10` (an exponential, then a line that reaches 1 at epoch 12.5). The SGD
# learning rate follows the "slow start" of s.2: half of the linear-scaling rate `0.1 x
# batch / 256` for 40 epochs, then drops at epochs 40 / 70 / 85, and no warm-up (RMSprop
# takes its place).
#
# Left: the paper's config (`configs/imagenet_resnet50_akiba32k.py`) at a global batch of
# 32,768, i.e. 39 steps per ImageNet epoch. Right, for comparison: the Goyal et al. baseline
# (`configs/imagenet_resnet50_goyal8k.py`, momentum SGD, 5 epochs of linear warm-up, x0.1 at
# 30 / 60 / 80) drawn at the same 32k batch: the linear scaling rule would ask for twice the
# slow start's rate there, which is what goes wrong at this batch size.

# %%
akiba = load_config("imagenet_resnet50_akiba32k.py")
goyal = load_config("imagenet_resnet50_goyal8k.py")
BATCH, STEPS_PER_EPOCH, EPOCHS = 32768, 39, 90

fig = matplotlib.figure.Figure(figsize=(13, 4), layout="constrained")
ax_akiba, ax_goyal = fig.subplots(1, 2)
for cfg, ax in ((akiba, ax_akiba), (goyal, ax_goyal)):
    lmsgd.optim.plot_schedules(
        cfg.optimizer,
        global_batch_size=BATCH,
        steps_per_epoch=STEPS_PER_EPOCH,
        num_epochs=EPOCHS,
        ax=ax,
    )
display(fig)

# %% [markdown]
# `alpha_sgd` against docs/recipe.md's reference values (`beta_center = 10`, `beta_period = 5`),
# and the slow-start rate at 32k on each plateau:

# %%
alpha = lmsgd.optim.alpha_sgd_schedule(STEPS_PER_EPOCH, beta_center=10.0, beta_period=5.0)
paper_alpha = {0: 0.0091578, 5: 0.0676676, 10: 0.5, 11: 0.7, 12: 0.9, 12.5: 1.0, 50: 1.0}
print(" epoch   alpha_sgd   docs/recipe.md")
for epoch, expected in paper_alpha.items():
    value = float(alpha(jnp.asarray(epoch * STEPS_PER_EPOCH, jnp.float32)))
    print(f"{epoch:6}   {value:9.7f}   {expected:9.7f}")
    np.testing.assert_allclose(value, expected, rtol=1e-5)

_, schedules = lmsgd.optim.create_optimizer(
    akiba.optimizer, global_batch_size=BATCH, steps_per_epoch=STEPS_PER_EPOCH, num_epochs=EPOCHS
)
eta = schedules["learning_rate"]
print("\nslow-start eta at 32k:", end="")
for epoch in (0, 40, 70, 85):
    print(f"  epoch {epoch}: {float(eta(epoch * STEPS_PER_EPOCH)):.4g}", end="")

# %% [markdown]
# ## 2. A short training run on the built-in digits
#
# `configs/default.py` is the paper's recipe shrunk to a laptop: a CIFAR-style ResNet-8 on
# scikit-learn's 8x8 digits (upsampled to 16x16, 1,437 training and 360 validation images),
# global batch 256 = 8 devices x 32 (each device normalizes its own 32 images, as each P100
# did), float16 all-reduce, 40 epochs = 200 steps. Its epoch-valued settings (hand-over,
# learning-rate drops) are the paper's scaled from 90 to 40 epochs by
# `lmsgd.optim.scale_epochs`, so the curves have the same shape as above.
#
# To keep the notebook to a couple of minutes we train for 20 epochs (100 steps) and apply
# the same rule once more (40 -> 20 epochs); `python -m lmsgd.train --config
# configs/default.py --workdir DIR` runs the full 40.
#
# `lmsgd.train.train_and_evaluate(config, workdir)` is the library function behind
# `python -m lmsgd.train`. It runs in a background thread here while the cell redraws the
# loss / accuracy curves from `<workdir>/metrics.jsonl` every few seconds. Only the final
# checkpoint is written (section 3 reloads it); TensorBoard summaries are turned off.

# %%
NUM_EPOCHS = 20.0


def digits_config(**model_changes):
    """configs/default.py shortened to NUM_EPOCHS, with `config.model` changes applied."""
    config = load_config("default.py")
    # Same rule as in default.py: epoch-valued optimizer settings keep their fraction of the run.
    config.optimizer = lmsgd.optim.scale_epochs(
        config.optimizer, NUM_EPOCHS, reference_epochs=config.num_epochs
    )
    config.num_epochs = NUM_EPOCHS
    config.eval_every_epochs = 2.5
    config.model.update(model_changes)
    config.checkpoint.every_steps = 10**6  # only the final checkpoint
    config.logging.every_steps = 1  # a metrics.jsonl record per step
    config.logging.tensorboard = False
    return config


config = digits_config()
print(f"{config.model.name}, batch {config.global_batch_size}, {config.num_epochs:g} epochs")
drops = [round(b, 2) for b in config.optimizer.slow_start.boundaries]
center = config.optimizer.rmsprop_warmup.beta_center
print(f"hand-over centred on epoch {center:.2f}; lr drops at epochs {drops}")


def read_metrics(workdir: str) -> list[dict]:
    """The complete records of `<workdir>/metrics.jsonl` (one JSON object per line)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def plot_metrics(records: list[dict], title: str = "") -> matplotlib.figure.Figure:
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig = matplotlib.figure.Figure(figsize=(13, 3.5), layout="constrained")
    ax_loss, ax_acc, ax_sched = fig.subplots(1, 3)
    epoch = [r["epoch"] for r in train]
    ax_loss.plot(epoch, [r["loss"] for r in train], label="train loss (global batch)")
    ax_loss.set_yscale("log")
    ax_acc.plot(epoch, [r["accuracy"] for r in train], label="train accuracy")
    if evals:  # eval records have no epoch: convert their step
        per_epoch = train[-1]["step"] / train[-1]["epoch"] if train else 1.0
        ax_acc.plot([r["step"] / per_epoch for r in evals], [r["top1"] for r in evals], "o-",
                    label="validation top-1")  # fmt: skip
    ax_acc.set_ylim(0, 1.02)
    ax_sched.plot(epoch, [r["learning_rate"] for r in train], label="learning rate (left, log)")
    ax_sched.set_yscale("log")
    ax_alpha = ax_sched.twinx()
    ax_alpha.plot(epoch, [r.get("alpha_sgd") for r in train], color="C1", label="alpha_sgd")
    ax_alpha.set_ylim(-0.02, 1.05)
    ax_sched.legend(handles=ax_sched.lines + ax_alpha.lines, loc="center right")
    for ax in (ax_loss, ax_acc, ax_sched):
        ax.set_xlabel("epoch")
    ax_loss.legend(loc="upper right")
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def train_with_live_plot(config, workdir: str, every_s: float = 5.0) -> dict:
    """train_and_evaluate in a thread; redraws metrics.jsonl until it returns."""
    result = {}

    def target():
        try:
            result["summary"] = lmsgd.train.train_and_evaluate(config, workdir)
        except BaseException as e:  # re-raised below, in the notebook's thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    handle = display(plot_metrics([], "compiling ..."), display_id=True)
    while thread.is_alive():
        thread.join(every_s)
        records = read_metrics(workdir)
        step = records[-1]["step"] if records else 0
        handle.update(plot_metrics(records, f"{workdir}: step {step}"))
    if "error" in result:
        raise result["error"]
    return result["summary"]


bs_workdir = tempfile.mkdtemp(prefix="lmsgd_batch_stats_")
t0 = time.perf_counter()
bs_summary = train_with_live_plot(config, bs_workdir)
print(f"{time.perf_counter() - t0:.0f}s including compilation")
print({k: v for k, v in bs_summary.items() if not isinstance(v, dict)})

# %% [markdown]
# The first two epochs are almost pure RMSprop (`alpha_sgd` starts at ~0.01, so the SGD
# learning rate hardly matters yet); the hand-over is complete by epoch 2.8 and the
# learning-rate drops late in the run polish the result. Expect about 94-96% validation top-1
# after these 20 epochs (the README reports 96.1-98.6% over three seeds for the full 40);
# `summary.json` and `metrics.jsonl` in the workdir hold everything plotted here.

# %% [markdown]
# ## 3. Batch statistics instead of moving averages
#
# docs/recipe.md s.3: during training each worker normalizes with the statistics of its own local
# minibatch (32 images per GPU) and **no running averages are kept**. For evaluation, the
# per-channel means and variances of the **last training minibatch of every worker are
# averaged across workers** (an all-reduce) and used for all evaluation passes. The argument:
# in ~3,500 large steps the weights move so much that an exponential moving average of past
# statistics does not describe the final network. Whether the authors used more than the last
# minibatch is not clear, so lmsgd makes it a setting:
#
# * (a) `model.eval_stats_batches = 1`: the last training batch's statistics, pooled exactly
#   over the 8 workers: what the train state holds in `batch_stats` mode (the run above);
# * (b) `model.eval_stats_batches = K > 1`: "precise BN", statistics recomputed with the final
#   weights over K fresh training batches; `lmsgd.evaluate.evaluate_checkpoint` does this on
#   the saved checkpoint;
# * (c) `model.norm_mode = "moving_average"`: classic BN with EMAs (momentum 0.9), the ablation;
#   a second, otherwise identical run.

# %%
# (b): the checkpoint of the run above, re-evaluated with statistics of 10 x 256 fresh images.
precise = lmsgd.evaluate.evaluate_checkpoint(digits_config(eval_stats_batches=10), bs_workdir)

# (c): the same run with moving averages.
ma_config = digits_config(norm_mode="moving_average")
ma_config.checkpoint.enabled = False
ma_workdir = tempfile.mkdtemp(prefix="lmsgd_moving_average_")
ma_summary = lmsgd.train.train_and_evaluate(ma_config, ma_workdir)

rows = [
    ("(a) last batch, pooled over workers", "batch_stats", bs_summary["eval_top1"],
     bs_summary["eval_loss"]),
    ("(b) precise BN, 10 fresh batches", "batch_stats", precise["top1"], precise["loss"]),
    ("(c) moving averages (momentum 0.9)", "moving_average", ma_summary["eval_top1"],
     ma_summary["eval_loss"]),
]  # fmt: skip
table = "| evaluation statistics | training run | top-1 | loss |\n|---|---|---|---|\n"
table += "".join(f"| {a} | `{b}` | {c:.2%} | {d:.4f} |\n" for a, b, c, d in rows)
display(Markdown(table))

fig = matplotlib.figure.Figure(figsize=(6, 3.5), layout="constrained")
ax = fig.subplots()
steps_per_epoch = bs_summary["plan"]["steps_per_epoch"]
for workdir, label in ((bs_workdir, "batch_stats (a)"), (ma_workdir, "moving_average (c)")):
    evals = [r for r in read_metrics(workdir) if r["kind"] == "eval"]
    epochs = [r["step"] / steps_per_epoch for r in evals]
    ax.plot(epochs, [r["top1"] for r in evals], "o-", label=label)
    print(f"{label:>20}:", " ".join(f"{e:g}: {r['top1']:.1%}" for e, r in zip(epochs, evals)))
ax.set_xlabel("epoch")
ax.set_ylabel("validation top-1")
ax.set_title("validation accuracy during training")
ax.legend()
display(fig)

# %% [markdown]
# What the numbers show, honestly:
#
# * **At the end of training the three are within a few validation images of each other**
#   (360 images: one image is 0.28 percentage points). At this scale the final numbers do not
#   separate them: the last ~10 steps at a small learning rate hardly move the weights, so an
#   EMA with momentum 0.9 (a memory of ~10 steps) describes the final network well, and one
#   batch of 8 x 32 images already estimates the statistics decently, so "precise BN" (b),
#   which removes the dependence on one particular last batch, gains at most a few images.
# * **During training the paper's argument shows up in miniature.** While the weights still
#   move fast (the RMSprop phase and the hand-over, centred on epoch ~2.2 here), the
#   moving-average evaluation lags far behind: its EMAs still remember the statistics, and at
#   first the 0 / 1 initial values, of networks that no longer exist. Statistics of the last
#   batch always belong to the current network, so (a) tracks it from the first evaluation.
#   The paper's runs (ResNet-50, ~3,500 large steps, large learning rates until epoch 40) sit
#   much closer to that fast-moving regime than this 100-step toy does at its end.

# %% [markdown]
# ## 4. The compiled step's collectives
#
# The train step is one `jax.jit`: a `shard_map` of forward, backward and the gradient
# all-reduce (`lmsgd.parallel.allreduce_mean`: pre-scale, cast to `allreduce.dtype`, reduce,
# rescale and use in float32), then the optimizer update on the replicated mean gradient.
# XLA compiles the all-reduce into the step, so the
# compiled program's HLO is the ground truth for what goes over the wire.
# `lmsgd.parallel.describe_collectives` parses it; `summarize_collectives` totals it per
# operation and dtype (elements and bytes are those of each result, on one device). The mesh
# here is 2 "hosts" x 4 local devices, the model a ResNet-8 at a quarter of the width.

# %%
# One set-up object for everything a run needs (validated config, mesh, model, optimizer,
# data source, sizes): the driver, the evaluator and the benchmarks start from it too.
step_config = load_config("default.py")
step_config.update_from_flattened_dict(
    {"model.width_multiplier": 0.25, "global_batch_size": 64, "eval_batch_size": 64,
     "allreduce.mesh_shape": (2, 4), "allreduce.algorithm": "hierarchical"}
)  # fmt: skip
run = lmsgd.run.build(step_config)
print(run.plan)
# Lowering needs only shapes, dtypes and shardings: eval_shape skips running the initializer.
state = jax.eval_shape(run.init_state)
sharding = lmsgd.parallel.batch_sharding(run.mesh)
size = step_config.data.image_size
batch = {
    "image": jax.ShapeDtypeStruct((64, size, size, 3), jnp.float32, sharding=sharding),
    "label": jax.ShapeDtypeStruct((64,), jnp.int32, sharding=sharding),
}
print(f"{lmsgd.models.count_params(state.params):,} parameters; mesh {dict(run.mesh.shape)}")


def lower_step(algorithm: str, dtype: str):
    step = lmsgd.step.make_train_step(
        run.model, run.tx, run.mesh, allreduce_algorithm=algorithm, allreduce_dtype=dtype
    )
    return step.lower(state, batch)


def collectives_table(programs: dict) -> str:
    """One row per op/dtype of each program: instructions, elements and bytes (per device)."""
    lines = [
        "| setting | program | op / dtype | count | elements | bytes | group size |",
        "|---" * 7 + "|",
    ]
    for (setting, stage), program in programs.items():
        collectives = lmsgd.parallel.describe_collectives(program)
        summary = lmsgd.parallel.summarize_collectives(collectives)
        for op, entry in sorted(summary.items()):
            groups = sorted({c.group_size for c in collectives if f"{c.op}/{c.dtype}" == op})
            lines.append(
                f"| {setting} | {stage} | {op} | {entry['count']} | {entry['elements']:,} "
                f"| {entry['bytes']:,} | {', '.join(map(str, groups))} |"
            )
    return "\n".join(lines)


programs = {}
for algorithm, dtype in (("flat", "float32"), ("flat", "float16"), ("two_dimensional", "float16")):
    programs[(f"{algorithm} / {dtype}", "compiled")] = lower_step(algorithm, dtype).compile()
lowered_bf16 = lower_step("flat", "bfloat16")
programs[("flat / bfloat16", "lowered")] = lowered_bf16
programs[("flat / bfloat16", "compiled")] = lowered_bf16.compile()
display(Markdown(collectives_table(programs)))

# %% [markdown]
# Reading the table:
#
# * Every program has a few float32 all-reduces besides the gradient: 168 batch-norm values
#   (means and variances of the last batch, pooled exactly over all workers for evaluation,
#   docs/recipe.md s.3) and the logged loss and accuracy. With `float32` XLA's all-reduce combiner
#   merges them with the gradient; in another dtype the gradient travels on its own.
# * `float16` halves the gradient's bytes against `float32` (the paper sent float16 over
#   NCCL). The gradient travels per tensor (the default `allreduce.fuse=False`: one collective
#   per parameter, which XLA's all-reduce combiner merges into buckets); in 16 bits each
#   level's partial sum travels divided by about sqrt(n) (`allreduce.predivide_exponent`) and
#   the rest of 1/N is applied in float32 after the sum, clear of subnormals and overflow.
# * `two_dimensional` (Mikami et al. 2018, Ying et al. 2018) replaces the one all-reduce over
#   8 devices by a reduce-scatter inside each host (groups of 4; the buffer is padded to a
#   multiple of 4), an all-reduce of a quarter of the buffer across the 2 hosts, and an
#   all-gather inside the host. Only a quarter of the gradient crosses the slow inter-host
#   links.
# * **bfloat16 on CPU:** the lowered program asks for a bfloat16 all-reduce, but XLA:CPU has
#   no bfloat16 reduction and promotes it to float32 when compiling, where the combiner then
#   merges it with the float32 statistics: the compiled CPU program is the float32 one. GPUs
#   and TPUs keep bfloat16; float16 stays float16 everywhere. Read the compiled program when
#   you care about bytes on the wire.

# %%
print(f"notebook compute time: {time.perf_counter() - T_START:.0f}s (after imports)")
