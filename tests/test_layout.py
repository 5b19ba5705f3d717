"""lmsgd.layout: the paper's recipe (BN over 32 images, an accurate float16 wire) on any
device count, and a one-line refusal where it cannot hold."""

import pathlib

import pytest

from lmsgd.config import load_config_file
from lmsgd.errors import ConfigError
from lmsgd.layout import resolve, resolve_algorithm

PAPER = str(pathlib.Path(__file__).resolve().parents[1] / "configs/imagenet_resnet50_akiba32k.py")


@pytest.mark.parametrize(
    ("devices", "processes", "per_device", "mesh"),
    [(1024, 128, 32, (128, 8)), (1024, 256, 32, (256, 4)), (128, 16, 256, (16, 8)),
     (128, 32, 256, (32, 4)), (512, 64, 64, (64, 8))],
)  # fmt: skip
def test_paper_config_keeps_bn_over_32_and_a_two_level_float16_wire(
    devices, processes, per_device, mesh
):
    layout = resolve(load_config_file(PAPER), devices, processes)
    assert layout.per_device_batch == 32768 // devices == per_device
    assert layout.bn_span == 32 and layout.accumulation_steps == 1
    assert (layout.algorithm, layout.dtype, layout.mesh_shape) == ("two_dimensional", "float16",
                                                                    mesh)  # fmt: skip
    assert f"BN over 32 images; all-reduce two_dimensional float16 on mesh {mesh[0]}x{mesh[1]}" in (
        layout.describe()
    )


def test_refuses_a_device_count_with_fewer_than_32_images_per_device():
    with pytest.raises(ConfigError, match="BN over 32 images needs at least 32") as e:
        resolve(load_config_file(PAPER), 2048, 256)
    assert "\n" not in str(e.value) and "bn_group_size=2" in str(e.value)
    with pytest.raises(ConfigError, match="not divisible by the 96 devices"):
        resolve(load_config_file(PAPER), 96, 12)


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (("auto", "float32", None, 1024, 128), ("flat", None)),  # exact sums need no levels
        (("auto", "float16", None, 8, 1), ("flat", None)),  # one host's worth
        (("auto", "bfloat16", None, 16, 2), ("two_dimensional", (2, 8))),
        (("auto", "float16", (4, 4), 16, 1), ("two_dimensional", (4, 4))),  # explicit 2-D mesh
        (("auto", "float16", None, 1024, 1), ("two_dimensional", (128, 8))),  # simulated devices
        (("auto", "float16", None, 12, 1), ("flat", None)),  # no split of 8 per host
        (("flat", "float16", None, 1024, 128), ("flat", None)),  # an explicit choice stays
        (("hierarchical", "float16", (2, 4), 8, 2), ("hierarchical", (2, 4))),
    ],
)
def test_auto_algorithm(args, want):
    assert resolve_algorithm(*args) == want


def test_layout_command_prints_the_line_and_refuses_in_one_line(capsys):
    from lmsgd.layout import main

    assert main(["lmsgd.layout", "--config", PAPER, "--devices", "128", "--processes", "16"]) == 0
    assert capsys.readouterr().out.strip() == (
        "128 devices (16 processes) x 256 images = 1 micro-batch of 256; BN over 32 images; "
        "all-reduce two_dimensional float16 on mesh 16x8"
    )
    assert main(["lmsgd.layout", "--config", PAPER, "--devices", "2048"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bn_virtual_batch_size=32" in err


def test_build_resolves_auto_and_refuses_what_the_devices_cannot_hold():
    """The driver's set-up (lmsgd.run.build) on this session's 8 devices: 'auto' becomes a
    concrete algorithm before the step is built; a BN span larger than a device's batch fails
    before anything is compiled."""
    from helpers import tiny_config

    from lmsgd.run import build

    run = build(tiny_config(**{"allreduce.algorithm": "auto", "allreduce.dtype": "float16",
                               "model.bn_virtual_batch_size": 4}))  # fmt: skip
    assert run.config.allreduce.algorithm == "flat"  # 8 devices in one process: one level
    assert run.plan.bn_span_examples == 4 and run.plan.per_device_batch == 8
    with pytest.raises(ConfigError, match="BN over 16 images needs at least 16"):
        build(tiny_config(**{"model.bn_virtual_batch_size": 16}))


def test_committed_v5p_plan_was_made_with_the_layout_the_driver_resolves():
    """results/plan/akiba32k_v5p_8x8x16.json (the figures the docs quote) planned the paper's
    config with the all-reduce and mesh the driver picks on 1,024 chips in 256 hosts."""
    import json

    plan = json.loads((pathlib.Path(PAPER).parents[1] / "results/plan/akiba32k_v5p_8x8x16.json")
                      .read_text())  # fmt: skip
    layout = resolve(load_config_file(PAPER), 1024, 256)
    assert plan["allreduce"]["algorithm"] == layout.algorithm == "two_dimensional"
    assert plan["allreduce"]["dtype"] == layout.dtype == "float16"
    assert tuple(plan["mesh"].values()) == layout.mesh_shape == (256, 4)
    assert plan["bn_span"] == layout.bn_span == 32


# --- accumulation derived from config.max_micro_batch (the paper's config: 256) --------------


@pytest.mark.parametrize(
    ("devices", "processes", "k", "micro"),
    [(8, 1, 16, 256), (32, 8, 4, 256), (64, 8, 2, 256), (128, 16, 1, 256), (1024, 128, 1, 32)],
)  # fmt: skip
def test_paper_config_derives_accumulation_from_max_micro_batch(devices, processes, k, micro):
    """32,768 images on N devices, at most 256 at once: K = 32768 / N / 256 (hand-computed),
    BN still over 32 images in every micro-batch."""
    layout = resolve(load_config_file(PAPER), devices, processes)
    assert (layout.accumulation_steps, layout.micro_batch, layout.bn_span) == (k, micro, 32)
    assert f"= {k} micro-batch{'es' if k > 1 else ''} of {micro};" in layout.describe()


def test_derived_accumulation_keeps_ghost_batches_whole_and_explicit_settings_win():
    from lmsgd.layout import accumulation_steps

    config = load_config_file(PAPER)
    with config.unlocked():
        config.max_micro_batch = 100  # 4,096 per device: micro-batches of 64 (not 100 or 80)
    assert accumulation_steps(config, 8) == 64
    config.model.bn_virtual_batch_size = 0
    assert accumulation_steps(config, 8) == 64  # 4,096 / 64: the first divisor within 100
    config.accumulation_steps = 2  # explicit: used as given
    assert resolve(config, 8).accumulation_steps == 2 and resolve(config, 8).micro_batch == 2048
    config.accumulation_steps = None
    config.max_micro_batch = None  # no limit: one micro-batch
    assert accumulation_steps(config, 8) == 1


def test_refuses_in_one_line_a_limit_no_split_can_meet():
    config = load_config_file(PAPER)
    config.global_batch_size = 80 * 8  # 80 per device: micro-batches of 32 cannot divide it
    config.max_micro_batch = 32
    with pytest.raises(ConfigError, match="no split into micro-batches of at most 32") as e:
        resolve(config, 8)
    assert "\n" not in str(e.value) and "bn_virtual_batch_size=32" in str(e.value)
    config.model.bn_virtual_batch_size, config.model.bn_group_size = 0, 2
    with pytest.raises(ConfigError, match="bn_group_size=1"):
        resolve(config, 8)


def test_driver_derives_accumulation_on_this_sessions_devices(tmp_path):
    """lmsgd.train's set-up: a new run takes the derived K; the model line's plan shows it."""
    from helpers import tiny_config

    from lmsgd.run import build
    from lmsgd.train import resolve_layout

    config = tiny_config(**{"max_micro_batch": 2})  # 64 images / 8 devices = 8: K = 4
    config, _ = resolve_layout(config, str(tmp_path))
    assert config.accumulation_steps == 4
    run = build(config)
    assert (run.plan.accumulation_steps, run.plan.micro_batch) == (4, 2)
