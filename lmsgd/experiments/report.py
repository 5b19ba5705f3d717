"""Reports of the large-batch experiment: per-recipe summaries, the markdown table, the figure.

`write_outputs` writes `results.json` (every run), `results.md` (the table) and
`test_accuracy.png` (test top-1 and train loss against epoch) into a results folder.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

from lmsgd.experiments.presets import RECIPES


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe (in recipe order): its runs' final and best top-1 and mean."""
    rows = []
    for key in RECIPES:
        runs = [r for r in records if r["recipe"] == key]
        if not runs:
            continue
        finals = [r["final_top1"] for r in runs if r["final_top1"] is not None]
        bests = [r["best_top1"] for r in runs if r["best_top1"] is not None]
        rows.append({
            "recipe": key,
            "label": runs[0]["label"],
            "seeds": [r["seed"] for r in runs],
            "statuses": [r["status"] for r in runs],
            "final_top1": [r["final_top1"] for r in runs],
            "best_top1": [r["best_top1"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
            "final_top1_mean": sum(finals) / len(finals) if finals else None,
            "best_top1_mean": sum(bests) / len(bests) if bests else None,
            "wall_time_s": [r["wall_time_s"] for r in runs],
            "bn_span_examples": [r["bn_span_examples"] for r in runs],
            "settings": runs[0]["settings"],
        })  # fmt: skip
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| recipe | optimizer, schedule (epochs) | BN (examples), eval statistics | batch | "
        "base lr | final top-1 % | best top-1 % (epoch) | wall time |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        s = row["settings"]
        norm = "batch statistics" if s["norm_mode"] == "batch_stats" else "moving averages"
        finals = " / ".join(
            pct(f) if st == "ok" else st for f, st in zip(row["final_top1"], row["statuses"])
        )
        if len(row["final_top1"]) > 1 and row["final_top1_mean"] is not None:
            finals += f" (mean {pct(row['final_top1_mean'])})"
        bests = " / ".join(
            f"{pct(b)} ({e:.3g})" if b is not None else "-"
            for b, e in zip(row["best_top1"], row["best_epoch"])
        )
        walls = " / ".join(duration(w) for w in row["wall_time_s"])
        spans = sorted({b for b in row["bn_span_examples"] if b is not None})
        bn = " / ".join(map(str, spans)) if spans else s["bn_examples"]
        lines.append(
            f"| {row['label']} | {s['optimizer']}, {s['schedule']} | {bn}, "
            f"{norm} | {s['global_batch_size']:,} | {s['base_learning_rate']:.4g} | {finals} | "
            f"{bests} | {walls} |"
        )
    return header + "\n".join(lines) + "\n"


def markdown_report(results: dict[str, Any]) -> str:
    p = results["preset"]
    hw = results["hardware"]
    title = f"## Large-batch experiment, preset `{p['name']}`"
    if p["reduced"]:
        title += " (REDUCED protocol, not the paper's)"
    seeds = ",".join(str(s) for s in results["seeds"])
    lines = [
        title,
        "",
        f"Protocol: {p['description']}.",
        "Epoch-valued optimizer settings are the paper's 90-epoch values x "
        f"{p['num_epochs']:g}/90 (`lmsgd.optim.scale_epochs`); 8 (simulated) devices; "
        f"top-1 on all {results['eval_examples'] or 0:,} held-out images; seeds {seeds}.",
        "",
        markdown_table(results["summary"]),
        f"Hardware: {hw['cpu']}, {hw['cpu_cores']} cores, {hw['memory_gb']} GB, "
        f"{results['devices'] or '8 simulated CPU devices'}; jax {hw['jax']}. "
        f"Wall time {duration(results['wall_time_s'])} for all runs (each: process start-up, "
        "data loading, compilation, training and evaluations).",
        f"Rerun: `python -m lmsgd.experiments.large_batch --preset {p['name']} --results_dir DIR "
        f"--recipes {','.join(results['recipes'])} --seeds {seeds}`; one recipe: "
        f"`python -m lmsgd.train --config configs/cifar10_large_batch/<file>.py:{p['name']} "
        "--workdir DIR`.",
        "",
    ]
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: pathlib.Path, title: str) -> None:
    """Test top-1 and train loss vs epoch, one colour per recipe, one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {key: plt.get_cmap("tab10")(i) for i, key in enumerate(RECIPES)}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in records})
    for r in records:
        seed_i = seeds.index(r["seed"])
        kw = {"color": colors[r["recipe"]], "linestyle": styles[seed_i % len(styles)]}
        label = f"{r['label']} (seed {r['seed']})"
        ev = [e for e in r["curves"]["eval"] if e.get("epoch") is not None and "top1" in e]
        if ev:
            ax_acc.plot([e["epoch"] for e in ev], [100 * e["top1"] for e in ev], marker=".",
                        label=label, **kw)  # fmt: skip
        tr = [t for t in r["curves"]["train"] if t.get("epoch") is not None and "loss" in t]
        tr = [t for t in tr if math.isfinite(t["loss"])]
        if tr:
            ax_loss.plot([t["epoch"] for t in tr], [t["loss"] for t in tr], label=label, **kw)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss (logged steps)", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], results_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {
        "json": results_dir / "results.json",
        "markdown": results_dir / "results.md",
        "figure": results_dir / "test_accuracy.png",
    }
    results["summary"] = summarize(results["runs"])
    # Sum of the runs' own wall times, so a rerun that reuses finished runs reports the same.
    results["wall_time_s"] = sum(r["wall_time_s"] or 0.0 for r in results["runs"])
    evals = [r["eval_examples"] for r in results["runs"] if r["eval_examples"]]
    results["eval_examples"] = evals[0] if evals else None
    devices = [r["devices"] for r in results["runs"] if r["devices"]]
    results["devices"] = devices[0] if devices else None
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["markdown"].write_text(markdown_report(results))
    title = f"large_batch preset {results['preset']['name']}"
    if results["preset"]["reduced"]:
        title += " (REDUCED protocol)"
    plot(results["runs"], paths["figure"], title)
    return paths
