"""Figures the users' pages quote, each tied to the committed results file it comes from.

A `Figure` names a results JSON, how to read and format one number from it, and, per page, a
pattern that finds where the page quotes it. `problems(pages)` lists every quote that differs
from its file (or a page that no longer quotes it); tests/test_docs.py runs it over the pages.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping

REPO = pathlib.Path(__file__).resolve().parents[1]
NUMBER = r"([\d,]+(?:\.\d+)?)"


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    results: str  # path of the JSON under the repository
    value: Callable[[dict], str]  # the number as the pages print it
    quotes: Mapping[str, str]  # page -> regex with one NUMBER group where it is quoted


def _plan(path: str, name: str, value: Callable[[dict], str], quotes: Mapping[str, str]):
    return Figure(name, path, value, quotes)


V5P = "results/plan/akiba32k_v5p_8x8x16.json"  # python -m lmsgd.plan ... --target tpu:v5p:8x8x16

FIGURES = [
    _plan(
        V5P,
        "v5p step time (ms)",
        lambda p: f"{p['estimate']['step_s'] * 1e3:.1f}",
        {
            "README.md": rf"1,024-chip TPU v5p slice.*?estimated {NUMBER} ms per step",
            "docs/performance.md": rf"\| estimated step \| {NUMBER} ms",
            "docs/planning.md": rf"tpu:v5p:8x8x16` \|.*?estimate {NUMBER} ms per step",
        },
    ),
    _plan(
        V5P,
        "v5p 90 epochs (s)",
        lambda p: f"{p['estimate']['run_s']:.0f}",
        {
            "README.md": rf"1,024-chip TPU v5p slice.*?ms per step, {NUMBER} s for 90 epochs",
            "docs/performance.md": rf"\| estimated step \|.*?\({NUMBER} s for 90 epochs\)",
            "docs/planning.md": rf"tpu:v5p:8x8x16` \|.*?\*\*{NUMBER} s for 90 epochs\*\*",
        },
    ),
    _plan(
        V5P,
        "v5p bytes accessed (GB)",
        lambda p: f"{p['bytes_accessed'] / 1e9:.1f}",
        {
            "docs/performance.md": rf"\| bytes accessed \| {NUMBER} GB \|",
            "docs/planning.md": rf"tpu:v5p:8x8x16` \|.*?GFLOP and {NUMBER} GB per chip per step",
        },
    ),
    _plan(
        V5P,
        "v5p FLOPs (GFLOP)",
        lambda p: f"{p['flops'] / 1e9:.0f}",
        {
            "docs/performance.md": rf"\| FLOPs \| {NUMBER} GFLOP",
            "docs/planning.md": rf"tpu:v5p:8x8x16` \|.*?; {NUMBER} GFLOP and",
        },
    ),
    _plan(
        V5P,
        "v5p peak memory (GiB)",
        lambda p: f"{p['memory']['peak_bytes'] / 2**30:.2f}",
        {
            "README.md": rf"1,024-chip TPU v5p slice.*?fits in {NUMBER} GiB per chip",
            "docs/performance.md": rf"\| peak memory \| {NUMBER} GiB",
            "docs/planning.md": rf"tpu:v5p:8x8x16` \|.*?fits: {NUMBER} GiB peak per chip",
        },
    ),
]

DEFAULT = "results/default_run/python3.11_jax0.10.2_seed{}.json"  # python -m lmsgd.train
DEFAULT_312 = "results/default_run/python3.12_jax0.12.0.1_seed0.json"  # the same, newest jax


def _top1(d: dict) -> str:
    return f"{d['eval_top1'] * 100:.1f}"


FIGURES += [
    Figure(
        f"default run top-1, seed {seed} (%)",
        DEFAULT.format(seed),
        _top1,
        {
            "README.md": r"It reaches "
            + r"% / ".join([NUMBER if i == seed else r"[\d.]+" for i in range(3)])
            + r"% validation top-1",
            "docs/results.md": r"validation top-1 \*\*"
            + r"% / ".join([NUMBER if i == seed else r"[\d.]+" for i in range(3)])
            + r"%\*\*",
        },
    )
    for seed in range(3)
] + [
    Figure(
        "default run top-1 on the newest jax, seed 0 (%)",
        DEFAULT_312,
        _top1,
        {
            "README.md": rf"digits with Python 3.11 and jax 0.10.2, and {NUMBER}% \(seed 0\)",
            "docs/results.md": rf"and\s+\*\*{NUMBER}%\*\* \(seed 0, Python 3.12",
        },
    ),
]


# python -m lmsgd.bench step --target T --per_device_batch B --phases ... --json FILE
STEP_TARGET_COLUMNS = [
    ("gpu:h100:8x1", 32, "results/step_target/gpu_h100_8x1_32.json"),
    ("gpu:h100:8x1", 128, "results/step_target/gpu_h100_8x1_128.json"),
]
ALL, AT_32 = (32, 128), (32,)
STEP_TARGET_ROWS = [  # the row's label in docs/performance.md, phase, ratio, batches
    ("bytes accessed, warm-up", "warmup", "bytes_accessed", ALL),
    ("peak memory, warm-up", "warmup", "peak_bytes", ALL),
    ("bytes accessed, after the hand-over", "sgd", "bytes_accessed", ALL),
    ("peak memory, after the hand-over", "sgd", "peak_bytes", ALL),
    ("bytes accessed, momentum", "momentum", "bytes_accessed", AT_32),
    ("peak memory, momentum", "momentum", "peak_bytes", AT_32),
    ("temporaries, warm-up", "warmup", "temp_bytes", ALL),
    ("kernels, warm-up", "warmup", "kernels", ALL),
    ("bytes accessed, warm-up, steps that log", "warmup_norms", "bytes_accessed", AT_32),
    ("peak memory, warm-up, steps that log", "warmup_norms", "peak_bytes", AT_32),
    ("kernels, warm-up, steps that log", "warmup_norms", "kernels", AT_32),
]


def _readme_step_quote(target: str, batch: int, phase: str, key: str) -> dict[str, str]:
    """README's summary row quotes warm-up and after-hand-over bytes and peak memory at 32
    per device as `GPU / TPU` pairs."""
    if batch != 32 or phase not in ("warmup", "sgd") or key not in ("bytes_accessed", "peak_bytes"):
        return {}
    where = "warm-up" if phase == "warmup" else "after the hand-over to SGD"
    what = "bytes" if key == "bytes_accessed" else "peak memory"
    pair = rf"{NUMBER}x" if target.startswith("gpu") else rf"[\d.]+x / {NUMBER}x"
    return {"README.md": rf"Flax ImageNet example's step, compiled.*?{where}: .*?{what} {pair}"}


def _step_target_cell(label: str, column: int) -> str:
    """The table cell `column` (0-based, after the label) of the row `| label | ...`."""
    return rf"\n\| {re.escape(label)} \|(?:[^|\n]*\|){{{column}}} {NUMBER} \|"


FIGURES += (
    [
        Figure(
            f"step --target {target}, {batch}/device: {label} (ours / baseline)",
            path,
            lambda d, phase=phase, key=key: f"{d['ratios_by_phase'][phase][key]:.2f}",
            {
                "docs/performance.md": _step_target_cell(label, column),
                **_readme_step_quote(target, batch, phase, key),
            },
        )
        for column, (target, batch, path) in enumerate(STEP_TARGET_COLUMNS)
        for label, phase, key, batches in STEP_TARGET_ROWS
        if batch in batches
    ]
    + [
        Figure(
            f"step --target {target}, {batch}/device: baseline {what}",
            path,
            fmt,
            {"docs/performance.md": _step_target_cell(f"baseline {what}", column)},
        )
        for column, (target, batch, path) in enumerate(STEP_TARGET_COLUMNS)
        for what, fmt in (
            ("GB accessed", lambda d: f"{d['results']['baseline']['bytes_accessed'] / 1e9:.2f}"),
            ("peak memory, GiB", lambda d: f"{d['results']['baseline']['peak_bytes'] / 2**30:.2f}"),
        )
    ]
    + [
        Figure(
            f"step --target {target}, {batch}/device: {label}",
            path,
            fmt,
            {"docs/performance.md": _step_target_cell(label, column)},
        )
        for column, (target, batch, path) in enumerate(STEP_TARGET_COLUMNS)
        for label, fmt in (
            (
                "all-reduces, ours (warm-up)",
                lambda d: f"{d['results']['warmup']['allreduce']['count']}",
            ),
            (
                "all-reduces, baseline",
                lambda d: f"{d['results']['baseline']['allreduce']['count']}",
            ),
            (
                "exposed all-reduce share, ours (warm-up)",
                lambda d: f"{d['results']['warmup']['exposed_allreduce_share']:.2f}",
            ),
            (
                "exposed all-reduce share, baseline",
                lambda d: f"{d['results']['baseline']['exposed_allreduce_share']:.2f}",
            ),
        )  # fmt: skip
    ]
)


def _pages() -> dict[str, str]:
    return {
        name: (REPO / name).read_text() for name in {page for f in FIGURES for page in f.quotes}
    }


def problems(pages: Mapping[str, str] | None = None) -> list[str]:
    """`page: figure quoted as X, results file says Y` for every quote that differs."""
    pages = _pages() if pages is None else pages
    out = []
    for figure in FIGURES:
        want = figure.value(json.loads((REPO / figure.results).read_text()))
        for page, pattern in figure.quotes.items():
            if page not in pages:
                continue
            found = re.findall(pattern, pages[page])
            if not found:
                out.append(f"{page}: {figure.name} not quoted (pattern {pattern!r})")
            out += [
                f"{page}: {figure.name} quoted as {got}, {figure.results} says {want}"
                for got in found
                if got != want
            ]
    return out
