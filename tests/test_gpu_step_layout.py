"""What the GPU choices of the train step do to the program XLA:GPU compiles (deviceless,
for 2 H100s; needs the CUDA plugin of the `plan` extra): each choice against the same step
without it, read from the compiled HLO.

- `allreduce_flatten` (off by default): the optimizer updates the kernels in place, with no
  float32 copy of a kernel into the donated state.
- `ResNet.gpu_derivatives` (on by default on GPUs): the stem's max pool's derivative is no
  scatter fed with int32 index tensors.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmsgd.parallel.hlo_text import parse_module, strip_index_comments
from lmsgd.plan import gpu as gpu_lib
from lmsgd.plan.targets import parse_target

pytestmark = pytest.mark.skipif(
    not gpu_lib.plugin_available(), reason="CUDA PJRT plugin not installed (the 'plan' extra)"
)


def compiled_text(*, flatten=False, gpu_derivatives=None) -> str:
    from lmsgd.models.registry import create_model
    from lmsgd.parallel import batch_sharding, replicated
    from lmsgd.step import init_train_state, make_train_step

    devices = gpu_lib.gpu_devices(parse_target("gpu:h100:2x1"))
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    model = create_model("resnet50", num_classes=10, dtype="bfloat16", width_multiplier=0.125)
    model = model.clone(gpu_derivatives=gpu_derivatives)
    tx = optax.sgd(0.1, momentum=0.9)
    abstract = jax.eval_shape(lambda: init_train_state(model, tx, jax.random.key(0), (32, 32, 3)))
    rep, data = replicated(mesh), batch_sharding(mesh)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract)
    batch = {
        "image": jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.bfloat16, sharding=data),
        "label": jax.ShapeDtypeStruct((8,), jnp.int32, sharding=data),
    }
    step = make_train_step(model, tx, mesh, allreduce_dtype="float16", norms=False,
                           allreduce_flatten=flatten)  # fmt: skip
    options = gpu_lib.compiler_options()
    return strip_index_comments(
        step.lower(state, batch).compile(compiler_options=options).as_text()
    )


def kernel_copies(text: str) -> list[str]:
    """Entry copies of float32 tensors of rank >= 2 (kernels: the optimizer state)."""
    comps, entry = parse_module(text)
    return [
        i.shape for i in comps[entry] if i.op == "copy" and re.match(r"f32\[\d+(,\d+)+\]", i.shape)
    ]


def index_tensors(text: str) -> int:
    """int32 arrays of rank 4: the positions XLA:GPU's max-pool derivative scatters to."""
    return len(re.findall(r"\bs32\[\d+,\d+,\d+,\d+\]", text))


@pytest.fixture(scope="module")
def default():
    return compiled_text()


def test_flattened_gradients_update_kernels_in_place(default):
    copied = kernel_copies(compiled_text(flatten=True))
    unflattened = kernel_copies(default)
    # Without the reshape XLA:GPU copies nearly every updated kernel (and its momentum) into
    # the donated state; with it, a few of the last stage's remain.
    assert len(unflattened) >= 50
    assert len(copied) * 10 <= len(unflattened)


def test_stem_pool_derivative_needs_no_index_tensors(default):
    assert index_tensors(default) == 0
    assert index_tensors(compiled_text(gpu_derivatives=False)) > 0
