"""ResNet family: standard parameter counts, forward/gradient, dtypes, CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmsgd.models import count_params, create_model, model_names
from lmsgd.models.summary import abstract_variables

# torchvision's published counts (1000 classes), an independent reference.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_imagenet_parameter_counts(name):
    params = abstract_variables(create_model(name, num_classes=1000), 224)["params"]
    assert count_params(params) == TORCHVISION_PARAMS[name]


def test_cifar_resnet20_parameter_count():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters; exact count for 16/32/64 widths
    # with 1x1 projection shortcuts, computed by hand below.
    convs = 3 * 3 * 3 * 16 + 3 * (2 * 9 * 16 * 16)  # stem + stage 1
    convs += 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 2 * (2 * 9 * 32 * 32)
    convs += 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64 + 2 * (2 * 9 * 64 * 64)
    norms = 2 * (16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64)
    head = 64 * 10 + 10
    params = abstract_variables(create_model("cifar_resnet20", num_classes=10), 32)["params"]
    assert count_params(params) == convs + norms + head


def test_resnet50_output_shapes_and_dtypes():
    model = create_model("resnet50", num_classes=7, dtype="bfloat16")
    shapes = abstract_variables(model, 64, batch_size=2)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes["params"]))
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), shapes, jnp.zeros((2, 64, 64, 3))
    )
    assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_resnet50_forward_and_gradient_at_small_resolution():
    model = create_model("resnet50", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    labels = jnp.array([3, 7])
    variables = model.init(jax.random.key(0), x, train=False)

    def loss_fn(params):
        logits, updates = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        onehot = jax.nn.one_hot(labels, 10)
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert np.isfinite(loss)
    # With zero-initialised residual scales and a small head the loss starts near log(10).
    assert abs(float(loss) - np.log(10)) < 0.5
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )


def test_zero_init_residual_and_width_multiplier():
    model = create_model("cifar_resnet20", num_classes=10, width_multiplier=0.5)
    params = abstract_variables(model, 32)["params"]
    assert params["conv_init"]["kernel"].shape == (3, 3, 3, 8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    block = variables["params"]["BasicBlock_0"]
    last_norm = sorted(k for k in block if k.startswith("BatchStatsNorm"))[-1]
    np.testing.assert_array_equal(block[last_norm]["scale"], 0.0)
    off = create_model("cifar_resnet20", num_classes=10, zero_init_residual=False)
    variables = off.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    assert float(jnp.min(variables["params"]["BasicBlock_0"]["BatchStatsNorm_1"]["scale"])) == 1.0


def test_bfloat16_compute_close_to_float32():
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    m32 = create_model("cifar_resnet8", num_classes=10, zero_init_residual=False)
    m16 = create_model("cifar_resnet8", num_classes=10, dtype="bfloat16", zero_init_residual=False)
    variables = m32.init(jax.random.key(0), x, train=False)
    y32, _ = m32.apply(variables, x, train=True, mutable=["batch_stats"])
    y16, _ = m16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, rtol=0.1, atol=0.05)


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="allowed: resnet18"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="allowed: float32, bfloat16"):
        create_model("resnet50", dtype="float16")
    assert "cifar_resnet20" in model_names()


def test_cli_prints_parameter_count_and_flops():
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.models", "resnet50"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "25,557,032" in out
    gflops = float(out.split("forward GFLOPs:")[1].split()[0])
    # ResNet-50 at 224: about 4.1 G multiply-adds = 8.2 GFLOPs (He et al. 2016, Table 1).
    assert abs(gflops - 8.2) / 8.2 < 0.05
