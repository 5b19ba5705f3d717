"""Collectives read from compiled programs, whichever text form XLA prints.

jax 0.10 prints replica groups as lists (``{{0,1},{2,3}}``) and an async all-reduce-start as
its result; jax 0.11+ prints the mesh-axes form (``mesh['a'=2,'b'=4] {'a'}``) and
``((operands), result)``, and runs small GPU all-reduces as Triton fusions. The tests compile
real programs with the installed jax (8 simulated CPU devices; XLA:GPU's deviceless compiler
where the CUDA plugin is installed) and hold the parsed report against what the program
asks for, worked out from the mesh and the shapes: group size = the product of the reduced
mesh axes, groups = the devices that share the other axes' coordinates, bytes = elements x
dtype size, once per collective. Hand-written snippets document each text form.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmsgd.parallel import describe_collectives
from lmsgd.parallel import hlo_text as H
from lmsgd.plan import gpu as gpu_lib
from lmsgd.plan import schedule as S

needs_plugin = pytest.mark.skipif(
    not gpu_lib.plugin_available(), reason="CUDA PJRT plugin not installed (the 'plan' extra)"
)
AXES = ("a", "b")
SHAPE = (2, 4)  # mesh: 2 x 4 devices
ROWS, COLS = 8, 1000  # global input; one row of COLS per device


def expected_groups(axes) -> set[frozenset[int]]:
    """Logical device ids (positions in the 2 x 4 mesh, row-major) grouped over `axes`."""
    ids = np.arange(math.prod(SHAPE)).reshape(SHAPE)
    reduced = [AXES.index(a) for a in axes]
    kept = [d for d in range(len(SHAPE)) if d not in reduced]
    size = math.prod(SHAPE[d] for d in reduced)
    return {frozenset(g) for g in ids.transpose(kept + reduced).reshape(-1, size).tolist()}


def as_sets(groups) -> set[frozenset[int]]:
    return {frozenset(g) for g in groups}


# ------------------------------------------------------------------ the text forms by hand


@pytest.mark.parametrize(
    "text, groups",
    [
        ("{{0,1},{2,3}}", [[0, 1], [2, 3]]),
        ("{{0,1,2,3,4,5,6,7}}", [list(range(8))]),
        # iota: 0..7 as [2,4] read as groups of 4 / as [4,2] transposed, groups of 2
        ("[2,4]<=[8]", [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ("[4,2]<=[2,4]T(1,0)", [[0, 4], [1, 5], [2, 6], [3, 7]]),
        ("[1,8]<=[8]", [list(range(8))]),
        # mesh axes (jax 0.11+): the named axes' devices, first named axis major
        ("mesh['a'=2,'b'=4] {'a'}", [[0, 4], [1, 5], [2, 6], [3, 7]]),
        ("mesh['a'=2,'b'=4] {'b'}", [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ("mesh['a'=2,'b'=4] {'a','b'}", [list(range(8))]),
        ("mesh['a'=2,'b'=4] {'b','a'}", [[0, 4, 1, 5, 2, 6, 3, 7]]),
        ("mesh[a=2,b=4] {b}", [[0, 1, 2, 3], [4, 5, 6, 7]]),  # unquoted names
        # sub-axes 'x':(pre)size: x=8 read as [pre, size, rest], the middle grouped
        ("mesh['x'=8] {'x':(1)2}", [[0, 4], [1, 5], [2, 6], [3, 7]]),
        ("mesh['x'=8] {'x':(2)2}", [[0, 2], [1, 3], [4, 6], [5, 7]]),
        ("mesh['x'=8] {'x':(1)2,'x':(4)2}", [[0, 1, 4, 5], [2, 3, 6, 7]]),
        # explicit device order: the mesh's devices are these ids
        ("mesh['a'=2,'b'=2], device_ids=(3,2,1,0) {'b'}", [[3, 2], [1, 0]]),
        (
            "mesh['a'=2,'b'=4], device_ids=([2,4]<=[4,2]T(1,0)) {'a'}",
            [[0, 1], [2, 3], [4, 5], [6, 7]],
        ),
    ],
)
def test_replica_group_forms(text, groups):
    assert H.replica_groups(text) == groups
    assert H.group_size(text) == len(groups[0])
    # The attribute is read whole out of an instruction's attributes, spaces included.
    attrs = f", channel_id=1, replica_groups={text}, use_global_device_ids=true, to_apply=%add"
    assert H.replica_groups_text(attrs) == text


def test_all_devices_group_has_no_size_in_the_text():
    assert H.replica_groups("{}") is None and H.group_size("{}") == 0 and H.group_size("") == 0


ADD = "%add (a: f32[], b: f32[]) -> f32[] {\n  ROOT %s = f32[] add(%a, %b)\n}\n"
OLD_ASYNC = (
    "ENTRY %m (p: f32[1000], q: bf16[256]) -> f32[1000] {\n"
    "  %ars = f32[1000]{0} all-reduce-start(%p), replica_groups={{0,1,2,3}}, to_apply=%add\n"
    "  %ard = f32[1000]{0} all-reduce-done(%ars)\n"
    "  %ags = (bf16[256]{0}, bf16[1024]{0}) all-gather-start(%q), replica_groups={{0,1,2,3}},"
    " dimensions={0}\n"
    "  %agd = bf16[1024]{0} all-gather-done(%ags)\n"
    "  ROOT %t = (f32[1000]{0}, bf16[1024]{0}) tuple(%ard, %agd)\n}\n"
)
NEW_ASYNC = (
    "ENTRY %m (p: f32[1000], q: bf16[256]) -> f32[1000] {\n"
    "  %ars = ((f32[1000]{0}), f32[1000]{0}) all-reduce-start(%p),"
    " replica_groups=mesh['d'=4] {'d'}, to_apply=%add, output_to_operand_aliasing={{1}: (0, {})}\n"
    "  %ard = f32[1000]{0} all-reduce-done(%ars)\n"
    "  %ags = ((bf16[256]{0}), bf16[1024]{0}) all-gather-start(%q),"
    " replica_groups=[1,4]<=[4], dimensions={0}\n"
    "  %agd = bf16[1024]{0} all-gather-done(%ags)\n"
    "  ROOT %t = (f32[1000]{0}, /*index=1*/bf16[1024]{0}) tuple(%ard, %agd)\n}\n"
)


@pytest.mark.parametrize("text", [OLD_ASYNC, NEW_ASYNC], ids=["jax0.10", "jax0.11+"])
def test_async_pairs_count_their_result_once_in_both_forms(text):
    found = [(c.op, c.dtype, c.element_count, c.bytes, c.group_size) for c in
             describe_collectives(ADD + text)]  # fmt: skip
    assert found == [("all-reduce", "f32", 1000, 4000, 4), ("all-gather", "bf16", 1024, 2048, 4)]
    sched = S.parse_schedule(ADD + text)
    assert [(c.op, c.bytes, c.is_async) for c in sched.collectives] == [
        ("all-reduce", 4000, True),
        ("all-gather", 2048, True),
    ]


# ------------------------------------------------------------------ real compiles


def _compile(mesh, body, dtype=jnp.float32, compiler_options=None) -> str:
    """Compiled text of `body` run per device (one row of COLS each) over the 2 x 4 mesh."""
    spec = P(AXES)
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))
    x = jax.ShapeDtypeStruct((ROWS, COLS), dtype, sharding=NamedSharding(mesh, spec))
    return fn.lower(x).compile(compiler_options=compiler_options).as_text()


# (program, its collective, reduced axes, result elements per device)
PROGRAMS = {
    "psum_ab": (lambda v: jax.lax.psum(v, AXES), "all-reduce", AXES, COLS),
    "psum_a": (lambda v: jax.lax.psum(v, "a"), "all-reduce", ("a",), COLS),
    "psum_b": (lambda v: jax.lax.psum(v, "b"), "all-reduce", ("b",), COLS),
    "psum_ba": (lambda v: jax.lax.psum(v, ("b", "a")), "all-reduce", ("b", "a"), COLS),
    "scatter_b": (
        lambda v: jax.lax.psum_scatter(v, "b", scatter_dimension=1, tiled=True),
        "reduce-scatter", ("b",), COLS // 4,
    ),
    "gather_a": (
        lambda v: jax.lax.all_gather(v, "a", axis=1, tiled=True), "all-gather", ("a",), COLS * 2
    ),
}  # fmt: skip


def _check(text: str, op: str, axes, elements: int, dtype: str) -> None:
    """The report of a one-collective program against the mesh and shapes."""
    itemsize = jnp.dtype(jnp.bfloat16 if dtype == "bf16" else jnp.float32).itemsize
    (c,) = describe_collectives(text)
    size = math.prod(SHAPE[AXES.index(a)] for a in axes)
    assert (c.op, c.dtype, c.group_size) == (op, dtype, size)
    assert (c.element_count, c.bytes) == (elements, elements * itemsize)
    assert as_sets(H.replica_groups(c.replica_groups)) == expected_groups(axes)
    (s,) = S.parse_schedule(text).collectives  # the schedule reader: the same collective
    assert (s.op, s.bytes, s.replica_groups) == (op, c.bytes, c.replica_groups)


@pytest.fixture(scope="module")
def cpu_mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(SHAPE), AXES)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cpu_compiled_collectives(cpu_mesh, name):
    body, op, axes, elements = PROGRAMS[name]
    _check(_compile(cpu_mesh, body), op, axes, elements, "f32")


def test_cpu_gradient_all_reduce_carries_every_parameter_once(cpu_mesh):
    """A data-parallel gradient step: psum of the gradients of a dense layer over all 8
    devices. However XLA combines the all-reduces, their elements add up to the parameters
    (+ the loss), each over one group of all 8 devices."""
    # One copy of the parameters per device (a leading axis of 8): their gradients differ per
    # device, so the psum below is the only all-reduce (shard_map would add its own for the
    # gradient of a replicated input).
    params = {"w": jnp.zeros((8, 16, 8)), "b": jnp.zeros((8, 8))}
    n_params = 16 * 8 + 8

    def step(p, x):
        p = jax.tree.map(lambda a: a[0], p)
        loss, g = jax.value_and_grad(lambda p: jnp.mean((x @ p["w"] + p["b"]) ** 2))(p)
        return jax.lax.psum((loss, g), AXES)

    spec = P(AXES)
    fn = jax.jit(jax.shard_map(step, mesh=cpu_mesh, in_specs=(spec, spec), out_specs=P()))
    text = fn.lower(params, jnp.ones((8 * 4, 16))).compile().as_text()
    found = describe_collectives(text)
    assert {c.op for c in found} == {"all-reduce"} and {c.group_size for c in found} == {8}
    assert sum(c.element_count for c in found) == n_params + 1
    assert sum(c.bytes for c in found) == (n_params + 1) * 4
    assert sum(c.bytes for c in S.parse_schedule(text).collectives) == (n_params + 1) * 4


@pytest.fixture(scope="module")
def gpu_mesh():
    from lmsgd.plan.targets import parse_target

    devices = gpu_lib.gpu_devices(parse_target("gpu:h100:4x2"))  # 2 nodes of 4 GPUs
    return Mesh(np.array(devices).reshape(SHAPE), AXES)


@needs_plugin
@pytest.mark.parametrize("name", ["psum_ab", "psum_a", "psum_b", "scatter_b", "gather_a"])
def test_xla_gpu_compiled_collectives(gpu_mesh, name):
    body, op, axes, elements = PROGRAMS[name]
    text = _compile(gpu_mesh, body, compiler_options=gpu_lib.compiler_options())
    _check(text, op, axes, elements, "f32")


@needs_plugin
def test_xla_gpu_keeps_bf16_and_counts_each_async_pair_once(gpu_mesh):
    """Two bf16 psums (over 'a' and over 'b'): XLA:GPU keeps bf16 on the wire and runs them
    asynchronously (an all-reduce-start / done pair, or a Triton fusion-start / done); each
    is one collective of COLS x 2 bytes, on the links its group spans (nodes of 4 GPUs)."""
    from lmsgd.plan.estimate import _link_for
    from lmsgd.plan.hardware import HARDWARE

    text = _compile(
        gpu_mesh,
        lambda v: (jax.lax.psum(v, "a"), jax.lax.psum(v * 2, "b")),
        dtype=jnp.bfloat16,
        compiler_options=gpu_lib.compiler_options(),
    )
    found = sorted(describe_collectives(text), key=lambda c: c.group_size)
    assert [(c.op, c.dtype, c.group_size, c.bytes) for c in found] == [
        ("all-reduce", "bf16", 2, COLS * 2),
        ("all-reduce", "bf16", 4, COLS * 2),
    ]
    links = [_link_for(c, HARDWARE["h100"], 8, 4) for c in found]
    assert links == ["inter-node-shared", "intra-node"]  # 'a' spans nodes, 'b' is a node
    sched = S.parse_schedule(text).collectives
    assert sorted((c.op, c.bytes) for c in sched) == [("all-reduce", COLS * 2)] * 2
    assert sum(c.is_async for c in sched) >= 1


@needs_plugin
def test_xla_gpu_gradient_all_reduce_carries_every_parameter_once(gpu_mesh):
    """bf16 gradients of a 128 x 128 dense layer and the f32 activations psum'd over the 8
    GPUs. Two all-reduces that can overlap each other: XLA:GPU runs them asynchronously (from
    jax 0.11 on, an ``((operands), result)`` all-reduce-start and a Triton fusion-start), and
    each counts once: parameters x 2 bytes, activations (4 rows x 128) x 4 bytes."""
    n_params, rows = 128 * 128 + 128, 4
    spec = P(AXES)

    def step(p, x):
        p = jax.tree.map(lambda a: a[0], p)
        g = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"]) ** 2))(p)
        g = jax.lax.psum(jax.tree.map(lambda a: a.astype(jnp.bfloat16), g), AXES)
        return g, jax.lax.psum(jnp.tanh(x @ p["w"]), AXES)[None]

    def sds(shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(gpu_mesh, spec))

    params = {"w": sds((8, 128, 128)), "b": sds((8, 128))}
    fn = jax.jit(jax.shard_map(step, mesh=gpu_mesh, in_specs=(spec, spec), out_specs=(P(), spec)))
    lowered = fn.lower(params, sds((8 * rows, 128)))
    text = lowered.compile(compiler_options=gpu_lib.compiler_options()).as_text()
    expect = {"bf16": n_params * 2, "f32": rows * 128 * 4}
    found = describe_collectives(text)
    assert {(c.op, c.group_size) for c in found} == {("all-reduce", 8)}
    assert {d: sum(c.bytes for c in found if c.dtype == d) for d in expect} == expect
    sched = S.parse_schedule(text).collectives
    assert sorted(c.bytes for c in sched) == sorted(expect.values())
    assert all(H.group_size(c.replica_groups) == 8 for c in sched)
    assert any(c.is_async for c in sched)  # which ones XLA leaves synchronous is its choice
