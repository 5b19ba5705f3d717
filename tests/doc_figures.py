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


INPUT = "lmsgd/plan/input_rates.json"  # python -m lmsgd.bench input (the planner reads it)
INPUT_PATHS = ("decode_and_crop", "decode_then_crop", "resize_crop", "tfds_image_folder",
               "tfrecord", "dct_scaled", "preresized", "cached", "preresized_cached")  # fmt: skip


def _input(path: str, key: str, fmt: Callable[[float], str]) -> Callable[[dict], str]:
    return lambda d: fmt(d["results"][path][key])


FIGURES += [
    Figure(
        f"bench input {path} {what}",
        INPUT,
        _input(path, key, fmt),
        {"docs/performance.md": rf"\| `{path}` \|" + r"[^|\n]*\|" * column + rf" {NUMBER}"},
    )
    for path in INPUT_PATHS
    for column, (what, key, fmt) in enumerate(
        [
            ("images/s per core", "images_per_s_per_core", lambda x: f"{x:.1f}"),
            ("ratio to decode_and_crop", "ratio_to_reference", lambda x: f"{x:.2f}"),
            ("peak RSS (GiB)", "peak_rss_bytes", lambda x: f"{x / 2**30:.2f}"),
        ]
    )
] + [
    Figure(
        "bench input host-to-device MB per step",
        INPUT,
        lambda d: f"{d['h2d']['bytes_per_step'] / 1e6:.2f}",
        {"docs/performance.md": rf"sends {NUMBER} MB of uint8 images and labels per step"},
    ),
]


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
