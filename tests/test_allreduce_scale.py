"""float16 / bfloat16 gradient all-reduce at the paper's scale: N = 1,024 simulated devices.

The numbers come from XLA's own collectives: a subprocess (this file run as a script) starts
JAX with 1,024 CPU devices, runs `allreduce_mean` on per-device gradients of known
distributions and compares the result with the float64 numpy mean of the same float32
inputs. (The test session itself has 8 devices, fixed in conftest.py before JAX starts.)

    python tests/test_allreduce_scale.py --dtypes float16,bfloat16 [--impl FILE.py]

prints one JSON line per algorithm x dtype with the relative error of each distribution
(`--json FILE` also writes them, with the command, date and versions, to FILE: the results
files under results/allreduce_scale/ that docs/scaling_out.md quotes); `--impl` loads another
`allreduce.py` (e.g. the previous one from git) to compare, and `--emulate` prints the numpy
running-sum (ring) model's figures instead (docs/scaling_out.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 1024
HOSTS = 128  # x 8 local devices: the paper's 128 nodes x 8 GPUs
ELEMENTS = 512  # per device and distribution; the error estimate is an average over these

# name -> (mean, std) of every device's gradient components. i.i.d.: independent zero-mean
# noise per device (the mean is ~ std / 32). coherent: every device near the same value.
DISTRIBUTIONS = {
    "iid_std_1e-2": (0.0, 1e-2),
    "iid_std_1e-3": (0.0, 1e-3),
    "iid_std_1e-4": (0.0, 1e-4),
    "coherent_100": (100.0, 10.0),
    "coherent_1": (1.0, 0.1),
    "coherent_0.01": (0.01, 0.001),
}


def gradients(seed: int = 0) -> dict[str, np.ndarray]:
    """`{distribution: float32 [DEVICES, ELEMENTS]}`, row d is device d's gradient."""
    rng = np.random.default_rng(seed)
    return {
        name: (mean + std * rng.standard_normal((DEVICES, ELEMENTS))).astype(np.float32)
        for name, (mean, std) in DISTRIBUTIONS.items()
    }


def relative_error(got: np.ndarray, grads: np.ndarray) -> float:
    """||got - mean||_2 / ||mean||_2 against the float64 mean over devices (axis 0)."""
    want = grads.astype(np.float64).mean(axis=0)
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


def measure(impl: str | None, dtypes: list[str], algorithms: list[str], **kwargs) -> list[dict]:
    """Runs in the 1,024-device process: one compiled all-reduce per algorithm x dtype."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if impl:  # another version of the module, e.g. `git show OLD:lmsgd/parallel/allreduce.py`
        spec = importlib.util.spec_from_file_location("allreduce_under_test", impl)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        allreduce_mean = module.allreduce_mean
    else:
        from lmsgd.parallel.allreduce import allreduce_mean
    from lmsgd.parallel import describe_collectives, summarize_collectives

    assert jax.device_count() == DEVICES, jax.device_count()
    devices = np.array(jax.devices())
    grads = gradients()
    rows = []
    for algorithm in algorithms:
        if algorithm == "flat":
            mesh = jax.sharding.Mesh(devices, ("data",))
        else:
            mesh = jax.sharding.Mesh(devices.reshape(HOSTS, -1), ("host", "local"))
        axes = tuple(mesh.axis_names)
        sharded = {k: jax.device_put(v, NamedSharding(mesh, P(axes))) for k, v in grads.items()}
        for dtype in dtypes:

            def per_device(g, dtype=dtype, axes=axes, algorithm=algorithm):
                g = jax.tree.map(lambda x: x[0], g)
                return allreduce_mean(g, data_axes=axes, algorithm=algorithm, dtype=dtype, **kwargs)

            fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(axes), out_specs=P()))
            compiled = fn.lower(sharded).compile()
            out = jax.device_get(compiled(sharded))
            wire = summarize_collectives(describe_collectives(compiled))
            errors = {k: relative_error(out[k], grads[k]) for k in grads}
            finite = {k: bool(np.all(np.isfinite(out[k]))) for k in grads}
            rows.append(
                {
                    "algorithm": algorithm,
                    "dtype": dtype,
                    "errors": errors,
                    "finite": finite,
                    "wire": wire,
                }
            )
    return rows


def run_worker(*args: str, timeout: float = 600) -> list[dict]:
    """Runs this file as a 1,024-device JAX process; returns its rows."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def emulate_running_sum(
    grads: np.ndarray, dtype: str, algorithm: str, exponent: float, hosts: int = HOSTS
) -> np.ndarray:
    """numpy model of a 16-bit all-reduce that rounds after every addition, in device order.

    That is a ring (NCCL's reduce-scatter: each hop adds one device's term to a partial sum
    carried in the wire dtype) and, as the float16 test below checks, exactly what XLA:CPU
    does. Same scaling rule as `allreduce_mean`. `grads`: float32 `[devices, E]`; returns the
    float32 mean `[E]`. Used to estimate bfloat16 on GPUs (XLA:CPU sums bfloat16 in float32).
    """
    import ml_dtypes

    from lmsgd.parallel.allreduce import wire_divisor

    wire = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]

    def cast(x, factor):  # x * factor in float32, rounded to the wire dtype
        return (x.astype(np.float32) * np.float32(factor)).astype(wire)

    def running_sum(terms):
        acc = terms[0]
        for t in terms[1:]:
            acc = (acc.astype(np.float32) + t.astype(np.float32)).astype(wire)
        return acc

    n = len(grads)
    if algorithm == "flat":
        d = wire_divisor(n, exponent)
        total = running_sum([cast(g, 1 / d) for g in grads])
    else:
        local = n // hosts
        d_local, d = wire_divisor(local, exponent), wire_divisor(n, exponent)
        partial = [
            running_sum([cast(g, 1 / d_local) for g in grads[h * local : (h + 1) * local]])
            for h in range(hosts)
        ]
        total = running_sum([cast(p, d_local / d) for p in partial])
    return total.astype(np.float32) * np.float32(d / n)


@pytest.fixture(scope="module")
def float16_rows() -> list[dict]:
    return run_worker("--dtypes", "float16")


IID = [k for k in DISTRIBUTIONS if k.startswith("iid")]
COHERENT = [k for k in DISTRIBUTIONS if k.startswith("coherent")]


def test_float16_mean_of_iid_gradients_within_1_percent(float16_rows):
    """Small i.i.d. gradients: the old 1/N pre-scaling gave 17% at std 1e-4 (subnormals)."""
    assert {r["algorithm"] for r in float16_rows} == {"flat", "hierarchical", "two_dimensional"}
    for row in float16_rows:
        for name in IID:
            assert row["finite"][name], row
            assert row["errors"][name] <= 0.01, (row["algorithm"], name, row["errors"])


def test_float16_mean_of_coherent_gradients_finite_and_close(float16_rows):
    """Coherent gradients: no overflow; a flat float16 sum of 1,024 terms drifts (<= 5%),
    two levels with rescaling between them stay within 1%."""
    for row in float16_rows:
        bound = 0.05 if row["algorithm"] == "flat" else 0.01
        for name in COHERENT:
            assert row["finite"][name], (row["algorithm"], name)
            assert row["errors"][name] <= bound, (row["algorithm"], name, row["errors"])


# What `allreduce.algorithm='auto'` picks for float16 (lmsgd.layout) at the paper's scale and on
# the launchers' default hardware (tests/test_launch.py: 16 nodes x 8 GPUs, v4-256 = 32 x 4).
AUTO_CASES = [(1024, 128), (128, 16), (128, 32)]


def test_auto_choices_are_within_1_percent_at_1024(float16_rows):
    """Every algorithm 'auto' chooses for a float16 wire on many devices is one this test
    bounds within 1% of the float64 mean for every distribution at 1,024 devices."""
    from lmsgd.layout import resolve_algorithm

    rows = {row["algorithm"]: row for row in float16_rows}
    for devices, processes in AUTO_CASES:
        algorithm, mesh = resolve_algorithm("auto", "float16", None, devices, processes)
        assert mesh == (processes, devices // processes), (devices, mesh)
        row = rows[algorithm]
        assert all(row["finite"].values()), row
        assert max(row["errors"].values()) <= 0.01, (devices, algorithm, row["errors"])


def test_numpy_running_sum_model_reproduces_xla_float16(float16_rows):
    """The model behind the docs' GPU (NCCL ring) estimates reproduces XLA:CPU's float16."""
    from lmsgd.parallel.allreduce import DEFAULT_PREDIVIDE_EXPONENT

    grads = gradients()
    for row in float16_rows:
        for name, g in grads.items():
            got = emulate_running_sum(g, "float16", row["algorithm"], DEFAULT_PREDIVIDE_EXPONENT)
            np.testing.assert_allclose(relative_error(got, g), row["errors"][name], rtol=1e-6)


def test_float16_travels_as_float16(float16_rows):
    """Scaling happens in float32 around the collectives; what travels stays float16: every
    gradient value crosses each level once at 2 bytes (XLA:CPU keeps float16 collectives)."""
    values = len(DISTRIBUTIONS) * ELEMENTS
    for row in float16_rows:
        wire = row["wire"]
        assert all(key.endswith("/f16") for key in wire), (row["algorithm"], wire)
        if row["algorithm"] == "two_dimensional":
            local = DEVICES // HOSTS
            assert wire["reduce-scatter/f16"]["bytes"] == values * 2 // local
            assert wire["all-reduce/f16"]["bytes"] == values * 2 // local
            assert wire["all-gather/f16"]["bytes"] == values * 2
        else:
            hops = 2 if row["algorithm"] == "hierarchical" else 1
            assert set(wire) == {"all-reduce/f16"}, wire
            assert wire["all-reduce/f16"]["bytes"] == hops * values * 2


# In the test session itself (8 devices, conftest.py): the rule and the knob, cheaply.


def _allreduce_on_session_devices(
    values: np.ndarray, algorithm: str, function: str = "allreduce_mean", **kwargs
) -> np.ndarray:
    """`allreduce_mean` (or `allreduce_sum`'s sums) of row d of `values` `[8, E]` on device d;
    mesh (2, 4) unless flat."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lmsgd.parallel import allreduce

    reduce = getattr(allreduce, function)

    devices = np.array(jax.devices()[:8])
    mesh = jax.sharding.Mesh(
        devices if algorithm == "flat" else devices.reshape(2, 4),
        ("data",) if algorithm == "flat" else ("host", "local"),
    )
    axes = tuple(mesh.axis_names)

    def per_device(g):
        out = reduce(g[0], data_axes=axes, algorithm=algorithm, **kwargs)
        return out[0] if function == "allreduce_sum" else out

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(axes), out_specs=P()))
    return np.asarray(fn(jax.device_put(values, NamedSharding(mesh, P(axes)))))


def test_wire_divisor_rule():
    from lmsgd.parallel.allreduce import wire_divisor

    assert wire_divisor(1024, 0.5) == 32  # flat at the paper's scale
    assert wire_divisor(8, 0.5) == 4  # 8 ** 0.5 = 2 ** 1.5, rounded half up
    assert wire_divisor(1024, 1.0) == 1024 and wire_divisor(1024, 0.0) == 1
    assert wire_divisor(1, 0.5) == 1


@pytest.mark.parametrize("algorithm", ["flat", "hierarchical", "two_dimensional"])
def test_float32_unchanged_by_the_exponent(algorithm):
    """float32 sums, then divides by N, whatever the exponent."""
    values = np.random.default_rng(1).normal(size=(8, 37)).astype(np.float32)
    a = _allreduce_on_session_devices(values, algorithm, dtype="float32")
    b = _allreduce_on_session_devices(values, algorithm, dtype="float32", predivide_exponent=0.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, values.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", ["flat", "hierarchical", "two_dimensional"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_allreduce_sum_leaves_only_the_last_scaling(algorithm, dtype):
    """`allreduce_sum` gives what travelled last, in float32, and the factor to the mean:
    1/N for float32 (the plain sum), d(N)/N for 16-bit (the sum arrives divided by d(N))."""
    import jax
    from jax.sharding import PartitionSpec as P

    from lmsgd.parallel.allreduce import allreduce_sum, wire_divisor

    rng = np.random.default_rng(5)
    values = rng.normal(size=(8, 37)).astype(np.float32)
    sums = _allreduce_on_session_devices(values, algorithm, "allreduce_sum", dtype=dtype)
    d = 1.0 if dtype == "float32" else wire_divisor(8, 0.5)
    np.testing.assert_allclose(
        sums, values.astype(np.float64).sum(0) / d, rtol=1e-6 if d == 1 else 2e-3, atol=1e-3
    )
    # The scale is a Python float known at trace time (no device value to wait for).
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    seen = []

    def per_device(g):
        total, scale = allreduce_sum({"g": g[0]}, data_axes=("data",), dtype=dtype)
        seen.append(scale)
        return total["g"]

    jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P()))(values)
    assert seen == [d / 8]
    mean = _allreduce_on_session_devices(values, algorithm, dtype=dtype)
    np.testing.assert_array_equal(mean, (sums * np.float32(d / 8)).astype(np.float32))


@pytest.mark.parametrize("algorithm", ["flat", "hierarchical", "two_dimensional"])
def test_float16_exponent_trades_overflow_for_underflow(algorithm):
    """Exponent 0 (sum first) overflows where the default does not; exponent 1 (the old
    mean-before-the-sum) flushes tiny gradients that the default keeps."""
    rng = np.random.default_rng(2)
    big = (2e4 * (1 + 0.1 * rng.standard_normal((8, 256)))).astype(np.float32)  # 8 x 2e4 > 65504
    tiny = (1e-6 * rng.standard_normal((8, 256))).astype(np.float32)  # float16 subnormals
    out = {
        e: _allreduce_on_session_devices(
            np.concatenate([big, tiny], 1), algorithm, dtype="float16", predivide_exponent=e
        )
        for e in (0.0, 0.5, 1.0)
    }
    assert not np.all(np.isfinite(out[0.0][:256]))
    assert relative_error(out[0.5][:256], big) < 1e-3
    # Subnormal spacing is absolute (6e-8): dividing by 8 instead of 4 doubles the error.
    assert relative_error(out[0.5][256:], tiny) < 0.1
    assert relative_error(out[1.0][256:], tiny) > 1.5 * relative_error(out[0.5][256:], tiny)


def test_exponent_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="predivide_exponent"):
        _allreduce_on_session_devices(
            np.zeros((8, 4), np.float32), "flat", dtype="float16", predivide_exponent=2.0
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float16")
    parser.add_argument("--algorithms", default="flat,hierarchical,two_dimensional")
    parser.add_argument("--impl", default=None, help="another allreduce.py to load")
    parser.add_argument("--predivide_exponent", type=float, default=None)
    parser.add_argument(
        "--emulate", action="store_true", help="numpy running-sum model instead of XLA"
    )
    parser.add_argument("--json", default=None, help="also write the rows, with provenance")
    args = parser.parse_args()
    rows = []
    if args.emulate:  # no JAX devices needed: the per-hop-rounding (ring) estimate
        from lmsgd.parallel.allreduce import DEFAULT_PREDIVIDE_EXPONENT

        e = (
            DEFAULT_PREDIVIDE_EXPONENT
            if args.predivide_exponent is None
            else args.predivide_exponent
        )
        grads = gradients()
        for algorithm in args.algorithms.split(","):
            for dtype in args.dtypes.split(","):
                errors = {
                    k: relative_error(emulate_running_sum(g, dtype, algorithm, e), g)
                    for k, g in grads.items()
                }
                rows.append({"algorithm": algorithm, "dtype": dtype, "emulated": errors})
                print(json.dumps(rows[-1]))
        _write_json(args.json, rows, e)
        return
    kwargs = {}
    if args.predivide_exponent is not None:
        kwargs["predivide_exponent"] = args.predivide_exponent
    rows = measure(args.impl, args.dtypes.split(","), args.algorithms.split(","), **kwargs)
    for row in rows:
        print(json.dumps(row), flush=True)
    from lmsgd.parallel.allreduce import DEFAULT_PREDIVIDE_EXPONENT

    e = DEFAULT_PREDIVIDE_EXPONENT if args.predivide_exponent is None else args.predivide_exponent
    _write_json(args.json, rows, e)


def _write_json(path: str | None, rows: list[dict], exponent: float) -> None:
    """The rows with what produced them: command, date, devices, versions."""
    if not path:
        return
    import datetime
    import platform

    import jax

    record = {
        "command": "python tests/test_allreduce_scale.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "device": f"{DEVICES} simulated XLA:CPU devices ({HOSTS} x {DEVICES // HOSTS} mesh "
        f"for two levels), {platform.processor() or platform.machine()}",
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "devices": DEVICES,
        "hosts": HOSTS,
        "elements": ELEMENTS,
        "predivide_exponent": exponent,
        "rows": rows,
    }
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_flattened_allreduce_is_the_same_sum(dtype):
    """`flatten=True` (the train step's choice on GPUs) sends each tensor as a 1-D vector:
    the sums are those of the float64 reference, in each tensor's shape, as without it."""
    import jax
    from jax.sharding import PartitionSpec as P

    from lmsgd.parallel.allreduce import allreduce_sum

    rng = np.random.default_rng(6)
    grads = {"kernel": rng.normal(size=(8, 3, 3, 4, 5)).astype(np.float32),
             "bias": rng.normal(size=(8, 5)).astype(np.float32)}  # fmt: skip
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))

    def run(flatten):
        def per_device(g):
            g = jax.tree.map(lambda x: x[0], g)
            total, scale = allreduce_sum(g, data_axes=("data",), dtype=dtype, flatten=flatten)
            return jax.tree.map(lambda x: x * scale, total)

        return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P()))(
            grads
        )

    flat, plain = run(True), run(False)
    for name, g in grads.items():
        assert flat[name].shape == g.shape[1:]
        np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(plain[name]))
        rtol = 1e-6 if dtype == "float32" else 2e-3
        want = g.astype(np.float64).mean(0)
        np.testing.assert_allclose(np.asarray(flat[name]), want, rtol=rtol, atol=1e-3)
