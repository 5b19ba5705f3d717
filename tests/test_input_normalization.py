"""Images travel as uint8 pixels; the model normalizes them on the device.

References are independent of the model code: numpy's float32 ``(x - mean) / std``, the
normalization the host pipelines did before sending float32 (or bfloat16) images.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import CLASSES, IMAGE, NDEV, PER_DEVICE, tiny_model

from lmsgd.data.config import IMAGENET_MEAN, IMAGENET_STD
from lmsgd.models.resnet import normalize_input
from lmsgd.optim import create_optimizer, default_optimizer_config
from lmsgd.parallel import batch_sharding
from lmsgd.step import create_train_state, make_eval_step, make_train_step


def host_normalize(pixels, mean, std, dtype=np.float32):
    """The former host normalization, in numpy: float32 arithmetic, then the wire dtype."""
    out = (pixels.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return out.astype(dtype)


@pytest.fixture(scope="module")
def mesh():
    return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def test_on_device_normalization_matches_host_reference():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 255, 128)  # the extremes
    got = jax.jit(lambda x: normalize_input(x, IMAGENET_MEAN, IMAGENET_STD))(pixels)
    assert got.dtype == jnp.float32
    want = host_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-7, atol=1e-6)
    # Then cast to bfloat16, as a bfloat16 model does: the old bfloat16 images, to the last bit
    # but for float32 rounding-boundary cases.
    bf = np.asarray(got.astype(jnp.bfloat16))
    ref = host_normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, ml_dtypes.bfloat16)
    assert (bf != ref).mean() < 1e-3
    # bfloat16 pixels (the other wire dtype) hold every uint8 level exactly.
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(levels.astype(ml_dtypes.bfloat16).astype(np.float32), levels)
    # A wrong statistic is caught: the check is not vacuous.
    other = host_normalize(pixels, IMAGENET_MEAN[::-1], IMAGENET_STD)
    assert np.abs(np.asarray(got) - other).max() > 0.1
    assert normalize_input(pixels, None, None) is pixels
    with pytest.raises(ValueError, match="per channel"):
        normalize_input(pixels, (1.0,), (1.0,))


def test_model_on_uint8_equals_model_on_host_normalized(mesh):
    """Same parameters: logits of uint8 pixels through the normalizing model equal the old
    path's (host-normalized float32 images, no normalization in the model)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (NDEV * PER_DEVICE, *IMAGE), dtype=np.uint8)
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    plain, normalizing = tiny_model(), tiny_model(input_mean=mean, input_std=std)
    variables = jax.jit(lambda k: plain.init(k, jnp.zeros((1, *IMAGE)), train=False))(
        jax.random.key(0)
    )
    # One compiled program for both: the models differ only in their input normalization.
    old, new = jax.jit(
        lambda v, x, p: (plain.apply(v, x, train=False), normalizing.apply(v, p, train=False))
    )(variables, host_normalize(pixels, mean, std), pixels)
    np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sharded_uint8_batch_through_train_and_eval_steps(mesh):
    """The compiled train step takes the sharded uint8 batch as it is (u8 parameter, a
    quarter of float32's bytes) and trains as on host-normalized float32 images."""
    mean, std = (120.0,) * 3, (64.0,) * 3
    model, plain = tiny_model(input_mean=mean, input_std=std), tiny_model()
    tx, _ = create_optimizer(
        default_optimizer_config(), global_batch_size=16, steps_per_epoch=10, num_epochs=2
    )
    rng = np.random.default_rng(2)
    n = NDEV * PER_DEVICE
    pixels = rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    sharding = batch_sharding(mesh)
    batch = jax.device_put({"image": pixels, "label": labels}, sharding)
    assert batch["image"].dtype == jnp.uint8
    assert all(s.data.dtype == jnp.uint8 for s in batch["image"].addressable_shards)
    step = make_train_step(model, tx, mesh)
    lowered = step.lower(create_train_state(model, tx, jax.random.key(0), IMAGE, mesh), batch)
    assert f"tensor<{n}x8x8x3xui8>" in lowered.as_text()  # the step's input is uint8
    _, metrics = step(create_train_state(model, tx, jax.random.key(0), IMAGE, mesh), batch)
    ref_batch = {"image": host_normalize(pixels, mean, std), "label": labels}
    _, ref = make_train_step(plain, tx, mesh)(
        create_train_state(plain, tx, jax.random.key(0), IMAGE, mesh),
        jax.device_put(ref_batch, sharding),
    )
    for key in ("loss", "grad_norm", "param_norm"):
        np.testing.assert_allclose(float(metrics[key]), float(ref[key]), rtol=1e-5)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    mask = np.ones(n, np.float32)
    sums = make_eval_step(model, mesh)(state, jax.device_put({**batch, "mask": mask}, sharding))
    plain_state = create_train_state(plain, tx, jax.random.key(0), IMAGE, mesh)
    ref_sums = make_eval_step(plain, mesh)(
        plain_state, jax.device_put({**ref_batch, "mask": mask}, sharding)
    )
    np.testing.assert_allclose(float(sums["loss_sum"]), float(ref_sums["loss_sum"]), rtol=1e-5)
