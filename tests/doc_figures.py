"""Figures the users' pages quote, each tied to the committed results file it comes from.

A `Figure` names a results JSON, how to read and format one number from it, and, per page, a
pattern that finds where the page quotes it. A `Passage` does the same for several numbers of
one file quoted in one sentence or table row; a `Block` ties a fenced block of a suite's printed
table to the file it printed it from (the page may keep a subset of the columns and rows).
`problems(pages)` lists every quote that differs from its file (or a page that no longer
quotes it); `unsourced(pages)` lists every number with a unit of measurement (ms, s, GiB, %,
x ratios, img/s, GFLOP, ...) that no quote covers and `ALLOWED` does not name;
tests/test_docs.py runs both over the pages. After a re-measurement,
`python tests/doc_figures.py --fix` rewrites the registered quotes from their files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
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


def _step_ms(fmt: str) -> Callable[[dict], str]:
    """A plan's estimated step in milliseconds, as the pages print it."""
    return lambda plan: fmt.format(plan["estimate"]["step_s"] * 1e3)


V5P = "results/plan/akiba32k_v5p_8x8x16.json"  # python -m lmsgd.plan ... --target tpu:v5p:8x8x16

FIGURES = [
    _plan(
        V5P,
        "v5p step time (ms)",
        _step_ms("{:.1f}"),
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

H100_8X16 = "results/plan/akiba32k_h100_8x16.json"  # python -m lmsgd.plan ... gpu:h100:8x16

FIGURES += [
    _plan(
        H100_8X16,
        "h100 8x16 images/s per host to feed",
        lambda p: f"{p['input_feed']['images_per_s_per_host']:,.0f}",
        {"docs/planning.md": rf"the estimated step needs {NUMBER}\s+images/s per host"},
    ),
    _plan(
        H100_8X16,
        "h100 8x16 host CPUs, decode_and_crop",
        lambda p: f"{p['input_feed']['paths']['decode_and_crop']['cpus_needed']:.1f}",
        {"docs/planning.md": rf"images/s per host: {NUMBER} of a node's"},
    ),
    _plan(
        H100_8X16,
        "h100 8x16 host CPUs per node",
        lambda p: f"{p['input_feed']['host_cpus']}",
        {"docs/planning.md": rf"of a node's {NUMBER} logical CPUs with the default path"},
    ),
    _plan(
        H100_8X16,
        "h100 8x16 host CPUs, device_resize",
        lambda p: f"{p['input_feed']['paths']['device_resize']['cpus_needed']:.1f}",
        {"docs/planning.md": rf"\(`decode_and_crop`\), {NUMBER} with `device_resize`"},
    ),
]

FIGURES += [
    _plan(
        V5P,
        "v5p 8x8x16 images/s per host to feed",
        lambda p: f"{p['input_feed']['images_per_s_per_host']:,.0f}",
        {"docs/planning.md": rf"a\s+host of 4 chips needs {NUMBER} images/s"},
    ),
    _plan(
        V5P,
        "v5p 8x8x16 host CPUs, decode_and_crop",
        lambda p: f"{p['input_feed']['paths']['decode_and_crop']['cpus_needed']:.1f}",
        {"docs/planning.md": rf"host of 4 chips needs [\d,]+ images/s: {NUMBER} of its"},
    ),
    _plan(
        V5P,
        "v5p host CPUs",
        lambda p: f"{p['input_feed']['host_cpus']}",
        {"docs/planning.md": rf"of its {NUMBER} logical CPUs with the default path"},
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


def _peak_gap(a: str, b: str, unit: str, fmt: str) -> Callable[[dict], str]:
    """results[a] - results[b] peak memory, in MiB or as a share of the baseline's peak."""

    def value(d: dict) -> str:
        r = d["results"]
        gap = r[a]["peak_bytes"] - r[b]["peak_bytes"]
        return fmt.format(gap / 2**20 if unit == "MiB" else 100 * gap / r["baseline"]["peak_bytes"])

    return value


def _bytes(d: dict, phase: str) -> float:
    return d["results"][phase]["bytes_accessed"]


def _ratio_at(phase: str, key: str):
    """The `bench step --target` ratio ours / baseline of `key` in `phase`, as quoted."""
    return lambda d: f"{d['ratios_by_phase'][phase][key]:.2f}"


PLAN_8MIB = "results/plan/akiba32k_h100_8x16_bf16_b4096.json"
FLATTEN_PLAN = "results/plan/akiba32k_h100_8x16_bf16_b4096_flatten.json"  # + allreduce.flatten
GPU32 = "results/step_target/gpu_h100_8x1_32.json"
GPU128 = "results/step_target/gpu_h100_8x1_128.json"
_P = "docs/performance.md"
FIGURES += [
    Figure("step --target gpu 32: m's peak memory (MiB)", GPU32,
           _peak_gap("warmup", "sgd", "MiB", "{:.1f}"),
           {_P: rf"warm-up's peak\s+memory is {NUMBER} MiB above"}),
    Figure("step --target gpu 32: m's share of the baseline peak (%)", GPU32,
           _peak_gap("warmup", "sgd", "%", "{:.1f}"),
           {_P: rf"MiB above the peak after the hand-over, {NUMBER}% of"}),
    Figure("step --target gpu 128: m's share of the baseline peak (%)", GPU128,
           _peak_gap("warmup", "sgd", "%", "{:.1f}"),
           {_P: rf"at 128 per GPU the buffer is {NUMBER}% of"}),
    Figure("step --target gpu 32: warm-up peak ratio in the text", GPU32,
           _ratio_at("warmup", "peak_bytes"),
           {_P: rf"which leaves {NUMBER} at 32 per GPU"}),
    Figure("step --target gpu 32: norms' bytes (GB)", GPU32,
           lambda d: f"{(_bytes(d, 'warmup_norms') - _bytes(d, 'warmup')) / 1e9:.2f}",
           {_P: rf"XLA:GPU {NUMBER} GB and [\d.]+ MiB of peak memory"}),
    Figure("step --target gpu 32: norms' peak memory (MiB)", GPU32,
           _peak_gap("warmup_norms", "warmup", "MiB", "{:.1f}"),
           {_P: rf"XLA:GPU [\d.]+ GB and {NUMBER} MiB of peak memory"}),
    Figure("step --target gpu 32: allreduce.flatten's warm-up peak", GPU32,
           _ratio_at("warmup_flatten", "peak_bytes"),
           {_P: rf"the warm-up's peak memory\s+is then {NUMBER} of the baseline's"}),
    Figure("step --target gpu 32: allreduce.flatten's warm-up bytes", GPU32,
           _ratio_at("warmup_flatten", "bytes_accessed"),
           {_P: rf"of the baseline's and its bytes {NUMBER}\."}),
    Figure("plan gpu:h100:8x16 flatten: all-reduces", FLATTEN_PLAN,
           lambda d: str(d["overlap"]["count"]),
           {_P: rf"combines the gradients into {NUMBER} all-reduces"}),
    Figure("plan gpu:h100:8x16 flatten: synchronous all-reduces", FLATTEN_PLAN,
           lambda d: str(d["overlap"]["count"] - d["overlap"]["async"]),
           {_P: rf"all-reduces, {NUMBER} of them synchronous"}),
    Figure("plan gpu:h100:8x16: asynchronous all-reduces", PLAN_8MIB,
           lambda d: str(d["overlap"]["async"]),
           {_P: rf"synchronous, in place of {NUMBER}\s+asynchronous ones"}),
    Figure("plan gpu:h100:8x16: step (ms)", PLAN_8MIB,
           _step_ms("{:.2f}"),
           {_P: rf"step for 16 x 8 H100 goes from {NUMBER} ms"}),
    Figure("plan gpu:h100:8x16 flatten: step (ms)", FLATTEN_PLAN,
           _step_ms("{:.2f}"),
           {_P: rf"H100 goes from [\d.]+ ms to {NUMBER} ms"}),
    Figure("step --target gpu 32: peak below the baseline after the hand-over (MiB)", GPU32,
           _peak_gap("baseline", "sgd", "MiB", "{:.1f}"),
           {_P: rf"peak memory is\s+{NUMBER} MiB \([\d.]+%\) below the baseline's"}),
    Figure("step --target gpu 32: peak below the baseline after the hand-over (%)", GPU32,
           _peak_gap("baseline", "sgd", "%", "{:.1f}"),
           {_P: rf"MiB \({NUMBER}%\) below the baseline's"}),
    Figure("step --target gpu 32: remat's saving of the warm-up peak (MiB)", GPU32,
           _peak_gap("warmup", "warmup_remat", "MiB", "{:.1f}"),
           {_P: rf"At 32 per GPU it takes {NUMBER} MiB off the\s+warm-up's peak"}),
    Figure("step --target gpu 32: remat's warm-up peak ratio", GPU32,
           _ratio_at("warmup_remat", "peak_bytes"),
           {_P: rf"meets the 1.03 \({NUMBER} of the baseline's"}),
    Figure("step --target gpu 32: remat's warm-up bytes ratio", GPU32,
           _ratio_at("warmup_remat", "bytes_accessed"),
           {_P: rf"of the baseline's, for {NUMBER} of its bytes"}),
    Figure("step --target gpu 128: remat's warm-up peak ratio", GPU128,
           _ratio_at("warmup_remat", "peak_bytes"),
           {_P: rf"a\s+higher peak \({NUMBER}\)"}),
    Figure("step --target gpu 128: peak below the baseline after the hand-over (MiB)", GPU128,
           _peak_gap("baseline", "sgd", "MiB", "{:.2f}"),
           {_P: rf"at 128 per GPU\s+{NUMBER} MiB below it"}),
]  # fmt: skip


INPUT = "lmsgd/plan/input_rates.json"  # python -m lmsgd.bench input (the planner reads it)
INPUT_PATHS = ("decode_and_crop", "decode_then_crop", "resize_crop", "tfds_image_folder",
               "tfrecord", "dct_scaled", "preresized", "cached", "preresized_cached",
               "device_resize", "device_resize_jpeg")  # fmt: skip


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


# --- several figures of one file in one passage; a printed table ----------------------------


def at(path: str, scale: float = 1.0, fmt: str = ".1f") -> Callable[[dict], str]:
    """The value at the dotted `path` of a results JSON (list items by index), times `scale`,
    formatted with `fmt` (e.g. ",.0f" for 1,682)."""

    def value(d: dict) -> str:
        for key in path.split("."):
            d = d[int(key)] if isinstance(d, list) else d[key]
        return format(d * scale, fmt)

    return value


GiB, MiB, GB, MB, MS, PCT = 2**-30, 2**-20, 1e-9, 1e-6, 1e3, 100.0


@dataclasses.dataclass(frozen=True)
class Passage:
    """Several figures of one results file quoted in one passage of one page.

    `pattern` is a regex with `{}` where each figure stands (in the order of `values`); a
    space in it matches any run of whitespace (a passage may wrap)."""

    page: str
    results: str
    pattern: str
    values: tuple[Callable[[dict], str] | None, ...]  # None: a figure another passage checks

    def regex(self) -> str:
        return self.pattern.replace(" ", r"\s+").replace("{}", NUMBER)


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block of a page that shows a suite's printed table, and the file it came from.

    `render(record)` prints the table from the JSON the suite wrote (the suite's own printer).
    The block is the fenced block whose first line is `command`; its other lines must be
    reproduced: the table's header names columns of the printed table, every row equals a
    printed row in those columns, and every other line is a printed line."""

    page: str
    results: str
    command: str
    render: Callable[[dict], str]


def _printed(printer: Callable[[dict], None]) -> Callable[[dict], str]:
    def render(record: dict) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            printer(record)
        return out.getvalue()

    return render


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _block_lines(text: str, command: str) -> tuple[int, int, list[str]] | None:
    """(start, end, lines after the first) of the fenced block whose first line is `command`."""
    for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        lines = m.group(1).splitlines()
        if lines and lines[0].strip() == command:
            return m.start(1), m.end(1), lines[1:]
    return None


def _block_problems(block: Block, text: str) -> list[str]:
    found = _block_lines(text, block.command)
    if found is None:
        return [f"{block.page}: no fenced block starting with {block.command!r}"]
    printed = block.render(load(block.results)).splitlines()
    normalized = {" ".join(line.split()) for line in printed}
    out, header, columns = [], None, None
    for line in found[2]:
        if not line.strip() or set(line.strip()) <= {"-", " "}:
            continue
        cells = _cells(line)
        if header is None:
            match = next((p for p in printed if _cells(p)[0] == cells[0] and len(cells) > 2), None)
            if match is not None:
                header = _cells(match)
                missing = [c for c in cells if c not in header]
                if missing:
                    out.append(
                        f"{block.page}: {block.command}: no column {missing} in {block.results}"
                    )
                    return out
                columns = [header.index(c) for c in cells]
                continue
        if columns is not None and len(cells) == len(columns):
            rows = [_cells(p) for p in printed]
            if not any(len(r) == len(header) and [r[i] for i in columns] == cells for r in rows):
                out.append(
                    f"{block.page}: {block.command}: row {cells} is not printed from "
                    f"{block.results}"
                )
            continue
        if " ".join(line.split()) not in normalized:
            out.append(
                f"{block.page}: {block.command}: line {line.strip()!r} is not printed "
                f"from {block.results}"
            )
    return out


def load(results: str) -> dict:
    """A results JSON, or for a folder `{file stem: JSON}` of the JSON files in it."""
    path = REPO / results
    if path.is_dir():
        return {f.stem: json.loads(f.read_text()) for f in sorted(path.glob("*.json"))}
    return json.loads(path.read_text())


# python -m lmsgd.bench step --target T --per_device_batch B --phases ... --json FILE
STEP_TARGET_COLUMNS = [
    ("gpu:h100:8x1", 32, "results/step_target/gpu_h100_8x1_32.json"),
    ("gpu:h100:8x1", 128, "results/step_target/gpu_h100_8x1_128.json"),
    ("tpu:v5p:2x2x1", 32, "results/step_target/tpu_v5p_2x2x1_32.json"),
    ("tpu:v5p:2x2x1", 128, "results/step_target/tpu_v5p_2x2x1_128.json"),
]


def _compiled_phases(path: str) -> set[str]:
    """The phases a `bench step --target` file compiled (the table shows – for the others)."""
    return set(json.loads((REPO / path).read_text())["ratios_by_phase"])


STEP_TARGET_ROWS = [  # the row's label in docs/performance.md, phase, ratio
    ("bytes accessed, warm-up", "warmup", "bytes_accessed"),
    ("peak memory, warm-up", "warmup", "peak_bytes"),
    ("bytes accessed, after the hand-over", "sgd", "bytes_accessed"),
    ("peak memory, after the hand-over", "sgd", "peak_bytes"),
    ("bytes accessed, momentum", "momentum", "bytes_accessed"),
    ("peak memory, momentum", "momentum", "peak_bytes"),
    ("bytes accessed, warm-up, model.remat", "warmup_remat", "bytes_accessed"),
    ("peak memory, warm-up, model.remat", "warmup_remat", "peak_bytes"),
    ("temporaries, warm-up", "warmup", "temp_bytes"),
    ("kernels, warm-up", "warmup", "kernels"),
    ("bytes accessed, warm-up, steps that log", "warmup_norms", "bytes_accessed"),
    ("peak memory, warm-up, steps that log", "warmup_norms", "peak_bytes"),
    ("kernels, warm-up, steps that log", "warmup_norms", "kernels"),
    ("bytes accessed, warm-up, allreduce.flatten", "warmup_flatten", "bytes_accessed"),
    ("peak memory, warm-up, allreduce.flatten", "warmup_flatten", "peak_bytes"),
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


# The TPU paragraph under the table: (column of STEP_TARGET_COLUMNS, phase, the words around
# the quoted bytes ratio; a space matches any run of spaces or line breaks).
TPU_PARAGRAPH = [
    (2, "sgd", "hand-over {} (32"),
    (3, "sgd", "(32 per chip) and {} (128)"),
    (0, "sgd", "where XLA:GPU gives {} and"),
    (1, "sgd", "where XLA:GPU gives [\\d.]+ and {}."),
    (2, "warmup", "copies: {} at 32 per chip"),
    (3, "warmup", "at 32 per chip, {} at 128"),
]


def _words(text: str) -> str:
    """`text` as a regex: `{}` the number, `[\\d.]+` kept, other characters literal."""
    parts = [re.escape(p).replace(r"\ ", r"\s+") for p in text.split("{}")]
    return NUMBER.join(parts).replace(re.escape("[\\d.]+"), r"[\d.]+")


FIGURES += [
    Figure(
        f"performance.md TPU paragraph: {STEP_TARGET_COLUMNS[column][0]} "
        f"{STEP_TARGET_COLUMNS[column][1]}/device, {phase} bytes",
        STEP_TARGET_COLUMNS[column][2],
        _ratio_at(phase, "bytes_accessed"),
        {"docs/performance.md": "(?s)On the TPU compiler.*?" + _words(words)},
    )
    for column, phase, words in TPU_PARAGRAPH
]

BEFORE = "results/step_target/before_one_pass_bn.json"  # the first measurement
FIGURES += [
    Figure(
        f"before one-pass BN, {target} {batch}/device: {key}",
        BEFORE,
        lambda d, target=target, batch=batch, key=key: (
            f"{d['ratios_over_flax_example'][target][str(batch)][key]:.2f}"
        ),
        {"docs/performance.md": _step_target_cell(f"before: {what}", column)},
    )
    for column, (target, batch, _) in enumerate(STEP_TARGET_COLUMNS)
    for key, what in (("bytes_accessed", "bytes accessed"), ("peak_bytes", "peak memory"))
]

FIGURES += (
    [
        Figure(
            f"step --target {target}, {batch}/device: {label} (ours / baseline)",
            path,
            _ratio_at(phase, key),
            {
                "docs/performance.md": _step_target_cell(label, column),
                **_readme_step_quote(target, batch, phase, key),
            },
        )
        for column, (target, batch, path) in enumerate(STEP_TARGET_COLUMNS)
        for label, phase, key in STEP_TARGET_ROWS
        if phase in _compiled_phases(path)
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
    names = {page for f in FIGURES for page in f.quotes} | set(SCANNED)
    names |= {p.page for p in PASSAGES} | {b.page for b in BLOCKS}
    return {name: (REPO / name).read_text() for name in names}


def problems(pages: Mapping[str, str] | None = None) -> list[str]:
    """`page: figure quoted as X, results file says Y` for every quote that differs."""
    pages = _pages() if pages is None else pages
    out = []
    for figure in FIGURES:
        want = figure.value(load(figure.results))
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
    for passage in PASSAGES:
        if passage.page not in pages:
            continue
        if not (REPO / passage.results).exists():
            if passage.results not in AWAITING:
                out.append(f"{passage.page}: {passage.results} is missing")
            continue
        record = load(passage.results)
        try:
            want = [v and v(record) for v in passage.values]
        except KeyError as e:  # a file of a folder, or a field, that is not there
            if not any(_stem(a) == e.args[0] for a in AWAITING):
                out.append(f"{passage.page}: {passage.results}: no {e}")
            continue
        found = list(re.finditer(passage.regex(), pages[passage.page], re.S))
        if not found:
            out.append(f"{passage.page}: passage not found (pattern {passage.pattern!r})")
        for m in found:
            got = list(m.groups())
            out += [
                f"{passage.page}: {g} where {passage.results} says {w} (in {passage.pattern!r})"
                for g, w in zip(got, want)
                if w is not None and g != w
            ]
    for block in BLOCKS:
        if block.page in pages and not (REPO / block.results).exists():
            if block.results not in AWAITING:
                out.append(f"{block.page}: {block.results} is missing")
        elif block.page in pages:
            out += _block_problems(block, pages[block.page])
    return out


# --- numbers with a unit that nothing sources ------------------------------------------------

# A number followed by a unit of time, memory, bytes, rate or a percentage, or a ratio (1.24x,
# x0.94). Units need a space or nothing before them; `x` ratios are written without a space.
UNIT = (
    r"(?:minutes?|seconds?|hours?|ms|µs|us|s|min|h|TB|GB|GiB|MB|MiB|KB|kB|KiB|B|bytes|B/param|"
    r"%|img/s|images/s|GFLOP|TFLOP/s|TFLOPS|GFLOP/s|GB/s|GBps|Gbit/s|PB/s|TB/s)"
)
MEASURE = re.compile(
    r"(?<![\w.,/-])\d[\d,]*(?:\.\d+)?(?:(?:-|\.\.)\d[\d,]*(?:\.\d+)?)?"
    r"(?:\s?" + UNIT + r"(?![\w/])|[x×](?![\w/]))"
    r"|(?<![\w.])[x×]\d[\d,]*(?:\.\d+)?(?![\w-])"
)


@dataclasses.dataclass(frozen=True)
class Allowed:
    """Numbers with units that are not measurements of ours: where (a regex over the page;
    a number inside one of its matches is allowed) and why."""

    page: str  # "*" for every scanned page
    pattern: str
    why: str


def _sections(text: str) -> list[tuple[int, int, str]]:
    """(start, end, heading) of every section, up to the next heading of its level or above."""
    heads = [
        (m.start(), len(m.group(1)), m.group(2).strip())
        for m in re.finditer(r"^(#{1,6}) (.*)$", text, re.M)
    ]
    out = []
    for i, (start, level, title) in enumerate(heads):
        end = next((s for s, lv, _ in heads[i + 1 :] if lv <= level), len(text))
        out.append((start, end, title))
    return out


def covered(page: str, text: str) -> list[tuple[int, int]]:
    """Spans of `text` that a registered quote or an allowance accounts for."""
    spans = []
    for figure in FIGURES:
        if page in figure.quotes:
            spans += [m.span(1) for m in re.finditer(figure.quotes[page], text)]
    for passage in PASSAGES:
        if passage.page == page:
            for m in re.finditer(passage.regex(), text, re.S):
                spans += [m.span(i + 1) for i in range(len(passage.values))]
    for block in BLOCKS:
        if block.page == page and (found := _block_lines(text, block.command)):
            spans.append(found[:2])
    for allowed in ALLOWED + PENDING:
        if allowed.page in (page, "*"):
            spans += [m.span() for m in re.finditer(allowed.pattern, text, re.M)]
    for start, end, title in _sections(text):
        if (page, title) in EXEMPT:
            spans.append((start, end))
    return spans


def unsourced(pages: Mapping[str, str] | None = None) -> list[str]:
    """`page:line: 'number unit'` for every figure with a unit that no quote covers."""
    pages = _pages() if pages is None else pages
    out = []
    for page in SCANNED:
        text = pages.get(page)
        if text is None:
            continue
        spans = covered(page, text)
        for m in MEASURE.finditer(text):
            if not any(a <= m.start() < b for a, b in spans):
                line = text.count("\n", 0, m.start()) + 1
                out.append(f"{page}:{line}: {m.group()!r}")
    return out


# --- what is scanned and what is not a measurement of ours -----------------------------------

SCANNED = [
    "README.md",
    "docs/performance.md",
    "docs/planning.md",
    "docs/scaling_out.md",
    "docs/optimizer.md",
    "docs/architecture.md",
]

H100 = "results/plan/akiba32k_h100_8x16_bf16_b4096.json"  # the acceptance command, planning.md
SWEEP = "results/sweep/runs"  # python -m lmsgd.experiments.large_batch --preset sweep


def sweep_top1(run: str) -> Callable[[dict], str]:
    """Mean final top-1 (%) of a sweep point's two seeds."""
    return lambda runs: f"{sum(runs[f'{run}_seed{s}']['final_top1'] for s in (0, 1)) * 50:.1f}"


def _default_top1(seed: int, file: str = DEFAULT) -> Callable[[dict], str]:
    return lambda _: _top1(json.loads((REPO / file.format(seed)).read_text()))


PASSAGES: list[Passage] = [
    Passage(
        "README.md",
        "results/default_run",
        r"\| {}% / {}% / {}% top-1, seeds 0-2 \(jax 0.10.2\); {}% seed 0 \(jax 0.12.0.1\)",
        (*(_default_top1(s) for s in range(3)), _default_top1(0, DEFAULT_312)),
    ),
    Passage(
        "README.md",
        SWEEP,
        r"paper's recipe keeps {}% top-1 where Goyal et al.'s falls to {}%; at each recipe's "
        r"own rate it is not ahead \({}% vs {}% at 1,280\)",
        (
            sweep_top1("f_paper_b05120_lrx2"),
            sweep_top1("c_goyal_b05120_lrx2"),
            sweep_top1("f_paper_b01280_lrx1"),
            sweep_top1("c_goyal_b01280_lrx1"),
        ),
    ),
    Passage(
        "README.md",
        V5P,
        r"4 chips\), {} MB of all-reduces and {} MB of all-gathers",
        (at("gradient_allreduce_bytes", MB), at("collectives.2.bytes", MB)),
    ),
    Passage(
        "README.md",
        H100,
        r"\| {} GiB peak per GPU; {} cuDNN convolutions; {} asynchronous float16 gradient "
        r"all-reduces, {}% of their bytes issued before the backward pass ends .*? "
        r"estimated {} ms per step",
        (
            at("memory.peak_bytes", GiB, ".2f"),
            at("kernels.cudnn", 1, "d"),
            at("overlap.async", 1, "d"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("estimate.step_s", MS),
        ),
    ),
]

# docs/scaling_out.md's table of 16-bit sums at 1,024 devices: python tests/test_allreduce_scale.py
SCALE = "results/allreduce_scale/xla_e0.5.json"  # --dtypes float16,bfloat16,float32
SCALE_E1 = "results/allreduce_scale/xla_e1.json"  # --dtypes float16 --predivide_exponent 1
RING = "results/allreduce_scale/emulated_ring.json"  # --emulate --dtypes float16,bfloat16


def _scale_error(algorithm: str, dtype: str, column: int, file: str = SCALE):
    def value(d: dict) -> str:
        row = next(r for r in d["rows"] if (r["algorithm"], r["dtype"]) == (algorithm, dtype))
        return f"{list(row['errors'].values())[column] * 100:.2f}"

    return value


def _scale_row(algorithm: str, dtype: str, label: str) -> list[Passage]:
    """One row of the table: e = 0.5's errors, and in brackets e = 1's where they differ (two
    files, so two passages over one pattern, each checking its own figures)."""
    e05, e1 = (json.loads((REPO / f).read_text()) for f in (SCALE, SCALE_E1))
    cells, mine, theirs = [], [], []
    for c in range(6):
        here = _scale_error(algorithm, dtype, c)
        cells.append("{}%")
        mine.append(here)
        theirs.append(None)
        other = _scale_error(algorithm, dtype, c, SCALE_E1) if dtype == "float16" else None
        if other is not None and other(e1) != here(e05):
            cells[-1] = r"{}% \({}%\)"
            mine.append(None)
            theirs.append(other)
    label = label.replace("(", r"\(").replace(")", r"\)")
    pattern = rf"(?m)^\| {algorithm} \| {label} \| " + r" \| ".join(cells) + r" \|$"
    return [
        Passage("docs/scaling_out.md", SCALE, pattern, tuple(mine)),
        Passage("docs/scaling_out.md", SCALE_E1, pattern, tuple(theirs)),
    ]


def _ring(algorithm: str, columns: slice, fn) -> Callable[[dict], str]:
    """min or max over some distributions of the emulated bfloat16 ring's error (%)."""

    def value(d: dict) -> str:
        row = next(r for r in d["rows"] if (r["algorithm"], r["dtype"]) == (algorithm, "bfloat16"))
        errors = list(row["emulated"].values())[columns]
        return f"{fn(errors) * 100:{'.0f' if fn(errors) > 0.1 else '.1f'}}"

    return value


def _max_error(algorithm: str, dtype: str, columns: slice, file: str = SCALE):
    def value(d: dict) -> str:
        row = next(r for r in d["rows"] if (r["algorithm"], r["dtype"]) == (algorithm, dtype))
        return f"{max(list(row['errors'].values())[columns]) * 100:.2f}"

    return value


IID, COHERENT, ALL = slice(0, 3), slice(3, 6), slice(0, 6)
CPU_BF16 = "bfloat16 (CPU: summed in f32)"
PASSAGES += [
    p
    for algorithm in ("flat", "hierarchical", "two_dimensional")
    for dtype, label in (("float16", "float16"), ("bfloat16", CPU_BF16))
    for p in _scale_row(algorithm, dtype, label)
] + [
    Passage(
        "docs/scaling_out.md",
        RING,
        r"flat, {}-{}% for i.i.d. and {}-{}% for coherent gradients .*? two levels \(8 then "
        r"128\), {}-{}% i.i.d. and {}-{}% coherent",
        (
            _ring("flat", IID, min),
            _ring("flat", IID, max),
            _ring("flat", COHERENT, min),
            _ring("flat", COHERENT, max),
            _ring("hierarchical", IID, min),
            _ring("hierarchical", IID, max),
            _ring("hierarchical", COHERENT, min),
            _ring("hierarchical", COHERENT, max),
        ),
    ),
    Passage(
        "docs/scaling_out.md",
        SCALE,
        r"default `predivide_exponent`: at most {}% for every distribution above",
        (_max_error("two_dimensional", "float16", ALL),),
    ),
    Passage(
        "docs/scaling_out.md",
        SCALE,
        r"Flat float16 stays within {}% for coherent",
        (_max_error("flat", "float16", COHERENT),),
    ),
]


def _suite(module: str, printer: str = "print_table") -> Callable[[dict], str]:
    """A bench suite's own table printer (imported when a check needs it)."""
    return _printed(lambda r: getattr(importlib.import_module(module), printer)(r))


OPT_CPU = "results/bench/optimizer_cpu_resnet50.json"  # python -m lmsgd.bench optimizer
OPT_TPU = "results/bench/optimizer_tpu_v5p.json"  # ... optimizer --target tpu:v5p:2x2x1
ALLREDUCE = "results/bench/allreduce_cpu8_resnet50.json"  # python -m lmsgd.bench allreduce
PERF = "docs/performance.md"
PLAN = "docs/planning.md"
PASSAGES += [
    Passage(
        PLAN,
        H100,
        r"same ResNet-50 step \({} GFLOP per GPU at 32 images, {} GFLOP per image;",
        (at("flops", GB), at("flops_per_image", GB)),
    ),
    Passage(
        PLAN,
        V5P,
        r"the TPU compiler's cost analysis says {} at 32 per chip\)",
        (at("flops", GB, ".0f"),),
    ),
    Passage(
        PLAN,
        H100,
        r"(?m)^\| \*\*8 MiB \(lmsgd's choice\)\*\* \| \*\*{}\*\* \| \*\*{}%\*\* \| "
        r"\*\*{}%\*\* \|$",
        (
            at("overlap.count", 1, "d"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("overlap.in_flight_during_backward", PCT, ".0f"),
        ),
    ),
    Passage(
        PLAN,
        H100,
        r"holds with 8 MiB buckets and {} all-reduces; the time line hides {}% of "
        r"the communication \({} ms of {} ms, {}% exposed\)",
        (
            at("overlap.count", 1, "d"),
            at("estimate.overlap", PCT, ".0f"),
            at("estimate.comm_s", MS, ".2f"),
            at("estimate.step_s", MS, ".2f"),
            lambda d: f"{(1 - d['estimate']['overlap']) * 100:.0f}",
        ),
    ),
    Passage(PLAN, H100, r"Acceptance command \({} s of compile", (at("compile_s", 1, ".0f"),)),
    Passage(
        PLAN,
        H100,
        r"prints: {} GiB peak per GPU of {} GiB \(arguments {}, outputs {}, temporaries {}, "
        r"aliased {} GiB\); {} GFLOP and {} GB per GPU per step \(HLO count\); {} async f16 "
        r"all-reduces, {} bytes \({} bytes x {} parameters\) and two f32 \({} bytes\); {} "
        r"kernels: {} cuDNN convolutions \({} forward, {} backward-filter, {} backward-input, "
        r"{} fused bias-activation\), {} fusions, {} cuBLAS; overlap {}% / {}% / {}%; step {} "
        r"ms \(memory-bound by the HLO byte count\), {}% scaling efficiency, {} min for 90",
        (
            at("memory.peak_bytes", GiB, ".2f"),
            at("memory.capacity_bytes", GiB, ".1f"),
            at("memory.argument_bytes", GiB, ".2f"),
            at("memory.output_bytes", GiB, ".2f"),
            at("memory.temp_bytes", GiB, ".2f"),
            at("memory.alias_bytes", GiB, ".2f"),
            at("flops", GB),
            at("bytes_accessed", GB),
            at("collectives.0.count", 1, "d"),
            at("collectives.0.bytes", 1, ",d"),
            lambda d: f"{d['collectives'][0]['bytes'] / d['num_params']:.3f}",
            at("num_params", 1, ",d"),
            at("collectives.1.bytes", 1, ",d"),
            at("kernels.kernels", 1, ",d"),
            at("kernels.cudnn", 1, "d"),
            at("kernels.cudnn_conv_forward", 1, "d"),
            at("kernels.cudnn_conv_backward_filter", 1, "d"),
            at("kernels.cudnn_conv_backward_input", 1, "d"),
            at("kernels.cudnn_conv_bias_activation", 1, "d"),
            at("kernels.fusions", 1, ",d"),
            at("kernels.cublas_gemm", 1, "d"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("overlap.in_flight_during_backward", PCT, ".0f"),
            at("estimate.overlap", PCT, ".0f"),
            at("estimate.step_s", MS, ".2f"),
            at("estimate.scaling_efficiency", PCT),
            at("estimate.run_s", 1 / 60, ".2f"),
        ),
    ),
    Passage(
        PLAN,
        H100,
        r"\| {} s compile \| fits: {} GiB of {} GiB; {} GFLOP, {} GB per GPU per step \(HLO "
        r"count\); {} async f16 all-reduces = {} bytes x parameters; {} cuDNN convolutions, {} "
        r"fusions; {}% of the gradient bytes issued before the backward pass ends, {}% of the "
        r"communication hidden; {} ms per step, {} min for 90 epochs",
        (
            at("compile_s", 1, ".0f"),
            at("memory.peak_bytes", GiB, ".2f"),
            at("memory.capacity_bytes", GiB, ".1f"),
            at("flops", GB),
            at("bytes_accessed", GB),
            at("collectives.0.count", 1, "d"),
            lambda d: f"{d['collectives'][0]['bytes'] / d['num_params']:.3f}",
            at("kernels.cudnn", 1, "d"),
            at("kernels.fusions", 1, ",d"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("estimate.overlap", PCT, ".0f"),
            at("estimate.step_s", MS, ".2f"),
            at("estimate.run_s", 1 / 60, ".2f"),
        ),
    ),
    Passage(
        PLAN,
        V5P,
        r"\| {} s compile \| fits: {} GiB peak per chip of {} GiB \(arguments {}, outputs {}, "
        r"temporaries {}, aliased {} GiB\); {} GFLOP and {} GB per chip per step; .*?: {} u32 "
        r"all-reduces \(float16 packed\) of {} bytes in groups of 4 and 256, {} float16 "
        r"all-gathers of {} bytes, plus two f32 all-reduces of {} bytes \(BN statistics, "
        r"metrics\); estimate {} ms per step \(memory-bound\), {} s per epoch, \*\*{} s for 90 "
        r"epochs\*\*, {}% scaling efficiency",
        (
            at("compile_s", 1, ".0f"),
            at("memory.peak_bytes", GiB, ".2f"),
            at("memory.capacity_bytes", GiB, ".0f"),
            at("memory.argument_bytes", GiB, ".2f"),
            at("memory.output_bytes", GiB, ".2f"),
            at("memory.temp_bytes", GiB, ".2f"),
            at("memory.alias_bytes", GiB, ".2f"),
            at("flops", GB, ".0f"),
            at("bytes_accessed", GB),
            at("collectives.1.count", 1, "d"),
            at("collectives.1.bytes", 1, ",d"),
            at("collectives.2.count", 1, "d"),
            at("collectives.2.bytes", 1, ",d"),
            at("collectives.0.bytes", 1, ",d"),
            at("estimate.step_s", MS),
            at("estimate.epoch_s", 1, ".2f"),
            at("estimate.run_s", 1, ".0f"),
            at("estimate.scaling_efficiency", PCT),
        ),
    ),
    Passage(
        PLAN,
        "results/plan/default_cpu8_measure20.json",
        r"\| compute \({} GFLOP per device / \(host peak / 8 x 0.5\)\) \| {} ms \|\n"
        r"\| memory \({} GB per device / \(20 GB/s / 8\)\) \| {} ms \|\n"
        r"\| communication \(two f32 and one f16 all-reduce, {} KB\) \| {} ms \|\n"
        r"\| \*\*estimate\*\* \| \*\*{} ms\*\* \|\n"
        r"\| \*\*measured\*\* \(20 steps after warm-up, synthetic data\) \| \*\*{} ms\*\* "
        r"\(estimate / measured = {}\) \|",
        (
            at("flops", GB, ".2f"),
            at("estimate.compute_s", MS),
            at("bytes_accessed", GB, ".2f"),
            at("estimate.memory_s", MS),
            lambda d: f"{sum(c['bytes'] for c in d['collectives']) / 1e3:.0f}",
            at("estimate.comm_s", MS, ".2f"),
            at("estimate.step_s", MS),
            at("measured_step_s", MS, ".0f"),
            lambda d: f"{d['estimate']['step_s'] / d['measured_step_s']:.2f}",
        ),
    ),
    Passage(
        PLAN,
        "results/plan/default_cpu8_measure20.json",
        r"load average {} at the end of the run\)",
        (at("provenance.load_average_1m"),),
    ),
    Passage(
        PLAN,
        "results/plan/default_cpu8_measure20.json",
        r"--measure 20` \| {} s compile \| estimate {} ms vs measured {} ms",
        (at("compile_s", 1, ".0f"), at("estimate.step_s", MS), at("measured_step_s", MS, ".0f")),
    ),
]
PASSAGES += [
    Passage(
        PERF,
        V5P,
        r"\| peak memory \| [\d.]+ GiB of {} GiB \|",
        (at("memory.capacity_bytes", GiB, ".0f"),),
    ),
    Passage(
        PERF,
        V5P,
        r"gradient: {} all-reduces of {} MB \(float16 packed in u32, groups of 4\) and {} "
        r"float16 all-gathers of {} MB; {} KB of float32",
        (
            at("collectives.1.count", 1, "d"),
            at("collectives.1.bytes", MB),
            at("collectives.2.count", 1, "d"),
            at("collectives.2.bytes", MB),
            at("collectives.0.bytes", 1e-3, ".0f"),
        ),
    ),
    Passage(
        PERF,
        V5P,
        r"\| estimated MFU \| {}% of the chip's {} TFLOP/s",
        (
            lambda d: (
                f"{d['flops'] / d['estimate']['step_s'] / d['estimate']['peak_flops'] * 100:.1f}"
            ),
            at("estimate.peak_flops", 1e-12, ".0f"),
        ),
    ),
]
AKIBA2017 = "results/plan/validation_akiba2017.json"  # python -m lmsgd.plan ... akiba2017


def _at_batch(images: int) -> Callable[[dict], str]:
    """Arguments plus `images` images' temporaries (GiB), from a plan at 32 per device."""
    return lambda d: (
        f"{(d['memory']['argument_bytes'] + d['memory']['temp_bytes'] * images / 32) * GiB:.1f}"
    )  # noqa: E501


PASSAGES += [
    Passage(
        PLAN,
        H100,
        r"bfloat16 on XLA:GPU holds {} GiB of temporaries \({} MB per image\) over "
        r"{} GiB of arguments, so 256 images take ~{} GiB",
        (
            at("memory.temp_bytes", GiB, ".2f"),
            at("memory.temp_bytes", MB / 32, ".0f"),
            at("memory.argument_bytes", GiB, ".2f"),
            _at_batch(256),
        ),
    ),
    Passage(
        PLAN,
        AKIBA2017,
        r"the P100 fallback\) holds {} GiB \({} MB per image\), so 112-128 "
        r"images take {}-{} GiB \(inside 16 GB\) and 256 would take ~{} GiB",
        (
            at("memory.temp_bytes", GiB, ".2f"),
            at("memory.temp_bytes", MB / 32, ".0f"),
            _at_batch(112),
            _at_batch(128),
            _at_batch(256),
        ),
    ),
    Passage(
        PLAN,
        "results/plan/default_cpu8_measure20.json",
        r"size \({}% for the default run's cifar_resnet8;",
        (lambda d: f"{(1 - d['gradient_allreduce_bytes'] / 2 / d['num_params']) * 100:.2f}",),
    ),
    Passage(
        PLAN,
        H100,
        r"cifar_resnet8; {}% for ResNet-50\)",
        (lambda d: f"{(1 - d['gradient_allreduce_bytes'] / 2 / d['num_params']) * 100:.2f}",),
    ),
]
# docs/planning.md's validation against published runs: one plan per row (commands there).
GOYAL2017 = "results/plan/validation_goyal2017.json"
V3_E90 = "results/plan/validation_v3_32x32_e90.json"  # Ying et al.
V3_E72 = "results/plan/validation_v3_32x32_e72.json"  # MLPerf v0.6, 1,024 chips
V3_E76 = "results/plan/validation_v3_16x32_e76.json"  # MLPerf v0.6, 512 chips
V100 = "results/plan/validation_v100_16x96.json"  # MLPerf v0.6, 1,536 V100
PLANS = "results/plan"  # figures that combine two plans
# The published times the predictions are divided by (s; sources in docs/planning.md).
PUBLISHED_S = {
    AKIBA2017: 15 * 60,
    GOYAL2017: 3600,
    V3_E90: 2.2 * 60,
    V3_E72: 76.95,
    V3_E76: 138.25,
    V100: 80.0,
}
LOGGED_EPOCH_S = {V3_E72: 0.996, V3_E76: 1.731, V100: 0.80}  # steady per-epoch time in the logs


def _minutes(digits: int = 2) -> Callable[[dict], str]:
    return at("estimate.run_s", 1 / 60, f".{digits}f")


def _ratio(file: str) -> Callable[[dict], str]:
    return lambda d: f"{d['estimate']['run_s'] / PUBLISHED_S[file]:.2f}"


def _stem(file: str) -> str:
    return pathlib.Path(file).stem


def _v3_scaling(runs: dict) -> str:
    """512 -> 1,024 chips: per-epoch time at 512 / (2 x per-epoch time at 1,024)."""
    e72, e76 = (runs[_stem(f)]["estimate"]["epoch_s"] for f in (V3_E72, V3_E76))
    return f"{e76 / 2 / e72 * 100:.1f}"


def _vs_log(file: str) -> Callable[[dict], str]:
    return lambda d: f"{d['estimate']['epoch_s'] / LOGGED_EPOCH_S[file]:.2f}"


def _split(pattern: str, *figures: tuple[str, Callable[[dict], str], int]) -> list[Passage]:
    """One passage per results file over the same pattern: (file, value, group index)."""
    n = pattern.count("{}")
    out = []
    for file in dict.fromkeys(f for f, _, _ in figures):
        values = [None] * n
        for f, value, i in figures:
            if f == file:
                values[i] = value
        out.append(Passage(PLAN, file, pattern, tuple(values)))
    return out


EPOCH = at("estimate.epoch_s", 1, ".3f")
SCALING = at("estimate.scaling_efficiency", PCT)
PASSAGES += [
    Passage(
        PLAN,
        AKIBA2017,
        r"\| 15 min \| {} min \| {} \| \*\*yes\*\*.*?\| {}% vs \"about 80%\"",
        (_minutes(1), _ratio(AKIBA2017), SCALING),
    ),
    Passage(
        PLAN,
        GOYAL2017,
        r"\| 1 h \| {} min \| {} \| no \| {}% vs \"~90%\"",
        (_minutes(1), _ratio(GOYAL2017), SCALING),
    ),
    Passage(
        PLAN,
        V3_E90,
        r"\| 32,768, 90 \| 2.2 min \| {} min \| {} \| no \| {}% vs not stated",
        (_minutes(), _ratio(V3_E90), SCALING),
    ),
    Passage(PLAN, V3_E72, r"as row 3 with `--config.num_epochs=72` \({} s per epoch\)", (EPOCH,)),
    Passage(
        PLAN, V3_E72, r"\| {} min \(72 x {} s\) \| {} \| no \|", (_minutes(), EPOCH, _ratio(V3_E72))
    ),
    Passage(PLAN, PLANS, r"\| {}% vs 87.0% \(512 -> 1,024 chips", (_v3_scaling,)),
    Passage(PLAN, V3_E76, r"--config.num_epochs=76` \({} s per epoch\)", (EPOCH,)),
    Passage(
        PLAN, V3_E76, r"\| {} min \(76 x {} s\) \| {} \| no \|", (_minutes(), EPOCH, _ratio(V3_E76))
    ),
    Passage(
        PLAN,
        V100,
        r"--config.num_epochs=90` \({} s per epoch; CPU-proxy fallback",
        (at("estimate.epoch_s", 1, ".2f"),),
    ),
    Passage(
        PLAN,
        V100,
        r"\| {} min \(90 x {} s\) \| {} \| no \| {}% vs not stated",
        (_minutes(), at("estimate.epoch_s", 1, ".2f"), _ratio(V100), SCALING),
    ),
    Passage(
        PLAN,
        AKIBA2017,
        r"`--target akiba2017` gives {} ms per step, {}% scaling, {} min",
        (at("estimate.step_s", MS, ".0f"), SCALING, _minutes(1)),
    ),
    Passage(
        PLAN,
        V100,
        r"on the fallback it gives {} ms per step, {} s per epoch, {} min, {}% "
        r"scaling: ratio {}\.",
        (
            at("estimate.step_s", MS, ".0f"),
            at("estimate.epoch_s", 1, ".2f"),
            _minutes(),
            SCALING,
            _ratio(V100),
        ),
    ),
    Passage(
        PLAN, AKIBA2017, r"Row 1 calibrates; its scaling efficiency \({}% predicted", (SCALING,)
    ),
    Passage(
        PLAN,
        AKIBA2017,
        r"the compiled {} MB float16 gradient",
        (at("gradient_allreduce_bytes", MB),),
    ),
    Passage(
        PLAN,
        GOYAL2017,
        r"\(50 GbE; float32 all-reduce of {} MB\): {}% fast",
        (
            at("gradient_allreduce_bytes", MB),
            lambda d: f"{(1 - d['estimate']['run_s'] / PUBLISHED_S[GOYAL2017]) * 100:.0f}",
        ),
    ),
    Passage(
        PLAN,
        V3_E90,
        r"\({} ms HBM against {} ms compute per step in row 3\)",
        (at("estimate.memory_s", MS), at("estimate.compute_s", MS)),
    ),
    *_split(  # each plan's figures from its own file, the scaling from both
        r"so the planner's {} and {} s are {}x and {}x the logged rate, and its "
        r"512 -> 1,024 scaling \({}%\)",
        (V3_E72, EPOCH, 0),
        (V3_E76, EPOCH, 1),
        (V3_E72, _vs_log(V3_E72), 2),
        (V3_E76, _vs_log(V3_E76), 3),
        (PLANS, _v3_scaling, 4),
    ),
    Passage(
        PLAN,
        V3_E90,
        r"is 1.47 s per epoch, {}x our step time",
        (lambda d: f"{PUBLISHED_S[V3_E90] / 90 / d['estimate']['epoch_s']:.1f}",),
    ),
    *_split(
        r"{} GB accessed per step at 90 epochs, {} GB at 72, so {} s per "
        r"epoch in row 3 and {} s in row 4",
        (V3_E90, at("bytes_accessed", GB, ".2f"), 0),
        (V3_E72, at("bytes_accessed", GB, ".2f"), 1),
        (V3_E90, EPOCH, 2),
        (V3_E72, EPOCH, 3),
    ),
    Passage(
        PLAN,
        V100,
        r"\*\*too slow\*\* by {}x \({}x per epoch: {} s predicted",
        (
            lambda d: f"{d['estimate']['run_s'] / PUBLISHED_S[V100]:.1f}",
            lambda d: f"{d['estimate']['epoch_s'] / LOGGED_EPOCH_S[V100]:.1f}",
            at("estimate.epoch_s", 1, ".2f"),
        ),
    ),
    Passage(
        PLAN,
        V100,
        r"\"bytes accessed\" \({} GB, {} ms of HBM traffic per step",
        (at("bytes_accessed", GB), at("estimate.memory_s", MS, ".0f")),
    ),
    Passage(PLAN, H100, r"for H100 at 32 images moves {} GB", (at("bytes_accessed", GB),)),
    Passage(
        PLAN,
        V100,
        r"Communication is {} ms of the {} ms\s+step here",
        (at("estimate.comm_s", MS), at("estimate.step_s", MS, ".0f")),
    ),
]
THRESHOLD = "results/plan/akiba32k_h100_8x16_bf16_b4096_threshold{}.json"  # XLA_FLAGS=...
TPU128 = "results/plan/akiba32k_v5p_4x4x8_bf16_b4096.json"  # the same step on 128 v5p chips
A100 = "results/plan/akiba32k_a100_8x1_bf16_b256.json"
V5P_F32 = "results/plan/akiba32k_v5p_8x8x16_f32.json"  # ... --config.allreduce.dtype=float32


def _largest_buffer(d: dict) -> dict:
    return max(d["overlap"]["buffers"], key=lambda b: b["bytes"])


def _overlap_row(label: str, file: str) -> Passage:
    return Passage(
        PLAN,
        file,
        rf"(?m)^\| {label} \| {{}} \| {{}}% \| {{}}% \|$",
        (
            at("overlap.count", 1, "d"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("overlap.in_flight_during_backward", PCT, ".0f"),
        ),
    )


PASSAGES += [
    Passage(
        PLAN,
        THRESHOLD.format(67108864),
        r"(?m)^\| 64 MiB \| {} \(one of {} MB = {}% of the bytes, issued with "
        r"{}% of the compute left\) \| {}% \| {}% \|$",
        (
            at("overlap.count", 1, "d"),
            lambda d: f"{_largest_buffer(d)['bytes'] * MB:.1f}",
            lambda d: f"{_largest_buffer(d)['bytes'] / d['overlap']['bytes'] * 100:.0f}",
            lambda d: f"{_largest_buffer(d)['compute_left_at_start'] * 100:.1f}",
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("overlap.in_flight_during_backward", PCT, ".0f"),
        ),
    ),
    _overlap_row("4 MiB", THRESHOLD.format(4194304)),
    _overlap_row("4 MiB \\+ analytical latency estimator", THRESHOLD.format("4194304_analytical")),
    Passage(
        PLAN,
        TPU128,
        r"\*\*one synchronous\*\* all-reduce of {} bytes \(u32, float16 packed\) issued after the "
        r"last convolution: {}% before the backward pass ends \(compile {} s\)\. TPU all-reduce "
        r"over ICI is {}% of that step \({}% scaling efficiency\)",
        (
            at("gradient_allreduce_bytes", 1, ",.0f"),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("compile_s", 1, ".0f"),
            lambda d: f"{d['estimate']['comm_s'] / d['estimate']['step_s'] * 100:.1f}",
            at("estimate.scaling_efficiency", PCT, ".0f"),
        ),
    ),
    Passage(
        PLAN,
        A100,
        r"\(`gpu:a100:8x1`: {} GiB peak per GPU, {} cuDNN convolutions, {} GFLOP, {}% of the "
        r"gradient bytes issued before the backward pass ends; {} s of compile;",
        (
            at("memory.peak_bytes", GiB, ".2f"),
            at("kernels.cudnn", 1, "d"),
            at("flops", GB),
            at("overlap.issued_before_backward_end", PCT, ".0f"),
            at("compile_s", 1, ".0f"),
        ),
    ),
]

# docs/performance.md's accumulation table: python -m lmsgd.bench step --quick --no_baseline
# --accumulation_steps K --steps 6 --warmup 2 --rounds 2 --json results/bench/accumulation_kK.json
BENCH = "results/bench"


def _acc(k: int, field: str, scale: float = 1.0, fmt: str = ".1f", rel: bool = False):
    def value(runs: dict) -> str:
        x = runs[f"accumulation_k{k}"]["results"]["ours"][field]
        if rel:
            return format((x / runs["accumulation_k1"]["results"]["ours"][field] - 1) * 100, fmt)
        return format(x * scale, fmt)

    return value


def _acc_speedup(k: int) -> Callable[[dict], str]:
    def value(runs: dict) -> str:
        ips = [runs[f"accumulation_k{x}"]["results"]["ours"]["images_per_s"] for x in (k, 1)]
        return f"{ips[0] / ips[1]:.2f}"

    return value


def _acc_row(k: int) -> Passage:
    growth = r" \(\+{}%\)" if k > 1 else ""
    return Passage(
        PERF,
        BENCH,
        rf"(?m)^\| {k} \| {{}} \| {{}} \| {{}} \| {{}} \| {{}} MiB{growth} \| {{}} MiB \| {{}} \|$",
        (
            _acc(k, "images_per_step", 1, "d"),
            _acc(k, "step_s_median", MS, ",.0f"),
            _acc(k, "images_per_s", 1, ",.0f"),
            _acc_speedup(k),
            _acc(k, "memory_bytes_per_device", MiB),
            *((_acc(k, "memory_bytes_per_device", fmt=".0f", rel=True),) if k > 1 else ()),
            _acc(k, "temp_bytes_per_device", MiB),
            _acc(k, "minor_faults_per_step", 1, ",.0f"),
        ),
    )


PASSAGES += [_acc_row(k) for k in (1, 2, 4, 8)] + [
    Passage(
        PERF,
        BENCH,
        r"From K=1 to K=8 the compiled memory grows by {}%",
        (_acc(8, "memory_bytes_per_device", fmt=".0f", rel=True),),
    ),
]
OPTIM, ARCH = "docs/optimizer.md", "docs/architecture.md"
_OPT = "results.rmsprop_warmup."


def _tpu(variant: str, part: str, field: str) -> Callable[[dict], str]:
    return at(f"results.{variant}.{part}.{field}", 1, ".2f")


PASSAGES += [
    Passage(
        OPTIM,
        OPT_CPU,
        r"\({} bytes per float32 parameter on XLA:CPU",
        (at(_OPT + "bytes_per_param_update", 1, ".0f"),),
    ),
    Passage(
        OPTIM,
        OPT_CPU,
        r"a cheaper update \({} instead of {} bytes per parameter",
        (
            at(_OPT + "bytes_per_param_update", 1, ".0f"),
            at("results.rmsprop_warmup_eta0.bytes_per_param_update", 1, ".0f"),
        ),
    ),
    Passage(
        OPTIM,
        OPT_CPU,
        r"`rmsprop_warmup` moves {} / {} bytes per parameter on XLA:CPU .*?"
        r"floor {} / {}\)",
        (
            at(_OPT + "bytes_per_param_update", 1, ".0f"),
            at(_OPT + "bytes_per_param_update_and_apply", 1, ".0f"),
            at(_OPT + "floor_bytes_per_param.update", 1, ".0f"),
            at(_OPT + "floor_bytes_per_param.update_and_apply", 1, ".0f"),
        ),
    ),
    Passage(
        OPTIM,
        OPT_TPU,
        r"compiled for one TPU v5p chip, {} / {}:",
        (
            _tpu("rmsprop_warmup", "update", "fused_bytes_per_param"),
            _tpu("rmsprop_warmup", "update_and_apply", "fused_bytes_per_param"),
        ),
    ),
    Passage(
        ARCH,
        OPT_CPU,
        r"on XLA:CPU it moves {} bytes per parameter per update, .*? \({} "
        r"bytes with the update applied, against {} for",
        (
            at(_OPT + "bytes_per_param_update", 1, ".0f"),
            at("results.rmsprop_warmup_wd.bytes_per_param_update_and_apply", 1, ".0f"),
            at("results.stock_rmsprop_warmup_wd.bytes_per_param_update_and_apply", 1, ".0f"),
        ),
    ),
    Passage(
        ARCH,
        OPT_TPU,
        r"kernel at the floor: {} bytes per parameter, {} with the update applied",
        (
            at("results.rmsprop_warmup.update.fused_bytes_per_param", 1, ".0f"),
            at("results.rmsprop_warmup.update_and_apply.fused_bytes_per_param", 1, ".0f"),
        ),
    ),
    Passage(
        ARCH,
        SCALE,
        r"\(at most {}% error against up to {}% for flat;",
        (_max_error("two_dimensional", "float16", ALL), _max_error("flat", "float16", ALL)),
    ),
    Passage(
        "README.md",
        OPT_TPU,
        r"at the memory floor: {} bytes per parameter \({} with the update "
        r"applied\)",
        (
            at("results.rmsprop_warmup.update.fused_bytes_per_param", 1, ".0f"),
            at("results.rmsprop_warmup.update_and_apply.fused_bytes_per_param", 1, ".0f"),
        ),
    ),
]
PASSAGES += [
    Passage(
        PERF,
        OPT_TPU,
        r"\*\*the floor, {}x\*\*, for every variant",
        (
            lambda d: (
                f"{max(r['update_and_apply']['over_floor'] for r in d['results'].values()):.2f}"
            ),
        ),
    ),
]


def _gradient_bytes(dtype: str) -> Callable[[dict], str]:
    """Lowered bytes of the fused flat gradient all-reduce in `dtype` (MiB, as printed)."""

    def value(d: dict) -> str:
        row = next(
            r
            for r in d["results"]
            if r["kind"] == "gradient"
            and r["fuse"]
            and r["algorithm"] == "flat"
            and r["dtype"] == dtype
        )
        return f"{row['lowered']['bytes'] * MiB:.1f}"

    return value


PASSAGES += [
    Passage(
        PERF,
        ALLREDUCE,
        r"in the lowered program \({} MiB against {} MiB\)",
        (_gradient_bytes("float16"), _gradient_bytes("float32")),
    ),
    Passage(
        PERF,
        ALLREDUCE,
        r"load average {} on the 2 cores during the run",
        (at("hardware.load_average_1m"),),
    ),
]


def _goodput_row(label: str, part: str, bold: bool = False) -> Passage:
    """A row of docs/resuming.md's table: seconds and share of the default run's wall time."""
    share = r"\*\*{}%\*\*" if bold else "{}%"
    label = label.replace("(", r"\(").replace(")", r"\)")

    def seconds(d: dict) -> str:
        g = d["goodput"]
        return f"{g['unaccounted_s'] if part == 'unaccounted' else g['parts_s'][part]:.1f}"

    def fraction(d: dict) -> str:
        g = d["goodput"]
        x = g["unaccounted_s"] if part == "unaccounted" else g["parts_s"][part]
        return f"{x / g['wall_s'] * 100:.1f}"

    return Passage(
        "docs/resuming.md",
        DEFAULT.format(0),
        rf"(?m)^\| {label} \| {{}} \| {share} \|$",
        (seconds, fraction),
    )


PASSAGES += [
    _goodput_row("imports (interpreter, JAX, flags)", "imports"),
    _goodput_row("build", "build"),
    _goodput_row("restore (here: a new run, so initialization)", "restore"),
    _goodput_row("compile (train step, init, eval, evaluation statistics, small ops)", "compile"),
    _goodput_row("train steps", "train_steps", bold=True),
    _goodput_row("eval (8 evaluations of 360 images)", "eval"),
    _goodput_row("checkpoint (blocking part of the saves and the final wait)", "checkpoint"),
    _goodput_row("data waits", "data_wait"),
    _goodput_row("unaccounted", "unaccounted"),
    Passage(
        "docs/resuming.md",
        DEFAULT.format(0),
        r"\| \*\*wall\*\* \| \*\*{}\*\* \|",
        (at("goodput.wall_s"),),
    ),
]
PASSAGES += [
    Passage(
        PLAN,
        V5P_F32,
        r"\| {} s compile \| gradient all-reduce f32 {} bytes = {} bytes x "
        r"parameters \(float32 sums flat, as `auto` picks\); {} s for 90 epochs",
        (
            at("compile_s", 1, ".0f"),
            at("gradient_allreduce_bytes", 1, ",.0f"),
            lambda d: f"{d['gradient_allreduce_bytes'] / d['num_params']:.3f}",
            at("estimate.run_s"),
        ),
    ),
]
BLOCKS: list[Block] = [
    Block(PERF, OPT_CPU, "python -m lmsgd.bench optimizer", _suite("lmsgd.bench.optimizer")),
    Block(PERF, ALLREDUCE, "python -m lmsgd.bench allreduce", _suite("lmsgd.bench.allreduce")),
    Block(
        PERF,
        OPT_TPU,
        "python -m lmsgd.bench optimizer --target tpu:v5p:2x2x1",
        _suite("lmsgd.bench.optimizer", "print_target_table"),
    ),
]
PASSAGES += [
    Passage(
        PERF,
        OPT_CPU,
        r"load average during the run: {} on 2 cores",
        (at("hardware.load_average_1m"),),
    ),
    Passage(
        PERF,
        OPT_CPU,
        r"the same {} / {} bytes per parameter\*\* \({}x\), at {}x the time in this run",
        (
            at("results.rmsprop_warmup.bytes_per_param_update", 1, ".0f"),
            at("results.rmsprop_warmup.bytes_per_param_update_and_apply", 1, ".0f"),
            at("summary.bytes_rmsprop_warmup_over_stock", 1, ".3f"),
            at("summary.time_rmsprop_warmup_over_stock", 1, ".3f"),
        ),
    ),
    Passage(
        PERF,
        OPT_CPU,
        r"own loops: {}x the time of .*? chain, {} against {} bytes",
        (
            at("summary.time_rmsprop_warmup_over_stock_wd", 1, ".3f"),
            at("results.rmsprop_warmup_wd.bytes_per_param_update_and_apply", 1, ".0f"),
            at("results.stock_rmsprop_warmup_wd.bytes_per_param_update_and_apply", 1, ".0f"),
        ),
    ),
    Passage(
        PERF,
        OPT_CPU,
        r"cannot move fewer than {} bytes there \({}x the floor\)",
        (
            at("results.rmsprop_warmup.bytes_per_param_update", 1, ".0f"),
            at("summary.bytes_update_over_floor", 1, ".2f"),
        ),
    ),
]

# Numbers with units that are not measurements of ours.
ALLOWED: list[Allowed] = [
    Allowed(
        "*",
        r"\b(?:4|8|64)\s+MiB\s+(?:all-reduce\s+)?(?:buckets|row|\(lmsgd's choice\))"
        r"|^\| 64 MiB \||\b(?:4|8) MiB(?= \+|\s*$| \|)",
        "XLA's all-reduce combine threshold (a flag value)",
    ),
    Allowed(PERF, r"one 4 KiB page", "the page size"),
    Allowed(PERF, r"at 2x and 4x the\s+bytes|3 bytes per pixel", "dtype and pixel sizes"),
    Allowed(PERF, r"at most 8 minutes|budgeted to 8 minutes", "bench device's --budget_s default"),
    Allowed("docs/scaling_out.md", r"SIGTERM 5 minutes before", "#SBATCH --signal=TERM@300"),
    Allowed(ARCH, r"takes more than about 20 s on 2 cores", "the slow-test threshold (a rule)"),
    Allowed(ARCH, r"a doubled reduction would fail them by 8x", "8 devices (arithmetic)"),
    Allowed(PLAN, r"50 Gbit/s Ethernet", "a published network specification"),
    Allowed(
        PLAN,
        r"(?s)Sources of the published figures in rows 4-5:.*?runs 2-4 were not read\.",
        "published figures: the MLPerf v0.6 result logs, each named",
    ),
    Allowed(
        PLAN,
        r"\| (?:15 min|1 h|2\.2 min) \||\d\.\d+ min \([\d.]+ s: MLPerf[^|]*\)"
        r"|1\.33 min \(80 s;[^|]*\)|vs \"about 80%\"|vs \"~90%\"|vs 87\.0%|to 75\.9%"
        r"|the logs' \(87\.0%\)|0\.996 s on 1,024 chips and 1\.731 s on 512 chips"
        r"|first block takes 9\.3 s for 4 epochs on 1,024 chips, later ones about 4\.0 s"
        r"|Ying et al\.'s 2\.2 min for 90 epochs|is 1\.47 s per epoch|\(25\.5 ms per step\)"
        r"|the logs'\s+0\.80 s per epoch|paper's \"about 80%\"",
        "the published runs' times, accuracies and scaling (papers, MLPerf logs)",
    ),
    Allowed(
        PLAN, r"agrees with the analytic formula to 2%", "the bound tests/test_plan_gpu.py asserts"
    ),
    Allowed(
        PLAN,
        r"(?m)^\| `(?:intra|inter)_latency_s` \|.*$|\b20 GB/s\b",
        "the estimator's assumptions (lmsgd.plan.estimate)",
    ),
    Allowed(
        PLAN, r"\(>= 80% of the gradient bytes", "the target the launchers' flags are chosen for"
    ),
    Allowed(
        PLAN,
        r"(?s)DGX-1 V100 16 GB and 32 GB,\s+DGX-2 V100 32 GB, DGX A100, T4 16 GB|inside 16 GB"
        r"|on 16 GB parts in AMP|in FP32 on 16 GB parts"
        r"|between 16 GB FP32 \(112-128\) and 32 GB / AMP",
        "NVIDIA's published platforms and memory sizes",
    ),
    Allowed(
        PERF,
        r"(?s)Reference points for images/s per accelerator.*?on 1,024 GPUs\)\.",
        "published figures, each named with its source",
    ),
    Allowed("README.md", r"\b\dx its scaled rate", "the sweep's learning-rate multiple"),
    Allowed(
        "docs/scaling_out.md",
        r"with a 3 s\s+timeout|\(300 s in the templates\)",
        "timeouts the code and templates set",
    ),
    Allowed(
        "docs/scaling_out.md",
        r"about 100 MB in float32, 50 MB in bfloat16",
        "25.6M parameters x 4 and x 2 bytes (arithmetic)",
    ),
    Allowed(
        "docs/scaling_out.md",
        r"within 1% of the exact mean|coherent: every device near "
        r"the same value\s+\(10% noise\)|\(≤ 1% everywhere, ≤ 5% for flat coherent\)",
        "the bounds tests/test_allreduce_scale.py asserts; a test distribution's definition",
    ),
    Allowed(
        "docs/scaling_out.md",
        r"and the wire is 4 bytes",
        "float32, what XLA:CPU promotes bfloat16 collectives to",
    ),
]

# Figures not sourced here yet, each with why: the test keeps this list from growing.
PENDING: list[Allowed] = [
    Allowed(
        "README.md",
        r"took 5 minutes on 2 cores|the full suite took 26 minutes",
        "the test suite's wall times (CI runs; no results file yet)",
    ),
    Allowed(
        "README.md",
        r"^09:3\d:\d\d .*$",
        "the default run's printed lines, an example of the output (re-measured with "
        "results/default_run)",
    ),
    Allowed(
        "README.md",
        r"^\| train step vs (?:a Flax-ImageNet-style baseline|the baseline).*$",
        "ours vs the Flax baseline (bench step, bench step --target): re-measured and "
        "sourced with the BN and baseline work",
    ),
]

# Results files a registered quote reads that have not been (re)made yet: their quotes are
# checked as soon as the file is committed (each command is next to its constant above).
AWAITING: set[str] = set()  # results files whose quotes wait for a run

# (page, section heading) -> why its figures are not checked here.
EXEMPT: dict[tuple[str, str], str] = {
    (PERF, "The train step against the baseline"): "pending: ours vs the Flax baseline, "
    "re-measured and sourced with the BN and baseline work",
    (PERF, "Compiled for GPUs, deviceless (XLA:GPU on a CPU host)"): "pending: as above",
    (PLAN, "GPU and TPU step benchmarks"): "pending: as above",
    (PLAN, "Hardware table"): "vendors' published specifications (lmsgd/plan/hardware.py, each "
    "with its source)",
}


def fix() -> list[str]:
    """Rewrites every registered quote (figures and passages) on the pages to the value its
    results file gives; returns what changed. For after a re-measurement:
    `python tests/doc_figures.py --fix`, then read the diff."""
    pages, changed = _pages(), []
    edits: dict[str, list[tuple[int, int, str]]] = {}
    for figure in FIGURES:
        want = figure.value(load(figure.results))
        for page, pattern in figure.quotes.items():
            for m in re.finditer(pattern, pages[page]):
                edits.setdefault(page, []).append((*m.span(1), want))
    for passage in PASSAGES:
        if not (REPO / passage.results).exists():
            continue
        try:
            want = [v and v(load(passage.results)) for v in passage.values]
        except KeyError:
            continue
        for m in re.finditer(passage.regex(), pages[passage.page], re.S):
            edits.setdefault(passage.page, []).extend(
                (*m.span(i + 1), w) for i, w in enumerate(want) if w is not None
            )
    for page, spans in edits.items():
        text = pages[page]
        for start, end, want in sorted(set(spans), reverse=True):
            if text[start:end] != want:
                changed.append(f"{page}: {text[start:end]} -> {want}")
                text = text[:start] + want + text[end:]
        (REPO / page).write_text(text)
    return changed


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--fix"]:
        print("\n".join(fix()) or "nothing to change")
    print("\n".join(problems() + unsourced()) or "every figure matches its results file")
