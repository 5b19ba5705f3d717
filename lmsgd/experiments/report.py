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


# --- the batch-size / learning-rate sweep (lmsgd.experiments.sweep) --------------------------

CHANCE_TOP1 = 0.1  # CIFAR-10: where a diverged run is drawn
BREAK_POINTS = 2.0  # "breaks": mean top-1 this many points below the reference, or diverged


def sweep_cells(sweep, records: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per (recipe, batch, lr multiplier): the seeds' final top-1 and divergences."""
    from lmsgd.experiments.sweep import is_final

    cells: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if not is_final(r, sweep):
            continue
        p = r["point"]
        cell = cells.setdefault(
            (p["recipe"], p["batch"], float(p["lr_multiplier"])),
            {"top1": [], "seeds": [], "diverged_steps": [], "base_learning_rate": None},
        )
        cell["base_learning_rate"] = r["base_learning_rate"]
        if r["status"] == "diverged":
            cell["diverged_steps"].append(r["diverged_step"])
        else:
            cell["top1"].append(r["final_top1"])
            cell["seeds"].append(p["seed"])
    for cell in cells.values():
        t = cell["top1"]
        cell["n"] = len(t) + len(cell["diverged_steps"])
        cell["mean"] = sum(t) / len(t) if t else None
        cell["min"] = min(t) if t else None
        cell["max"] = max(t) if t else None
    return cells


def cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    parts = []
    if cell["top1"]:
        half = (cell["max"] - cell["min"]) / 2 * 100
        spread = f" ±{half:.2f}" if len(cell["top1"]) > 1 else ""
        parts.append(f"{pct(cell['mean'])}{spread} ({len(cell['top1'])})")
    if cell["diverged_steps"]:
        steps = ", ".join("?" if s is None else str(s) for s in sorted(
            cell["diverged_steps"], key=lambda s: -1 if s is None else s))  # fmt: skip
        parts.append(f"**diverged** x{len(cell['diverged_steps'])} (step {steps})")
    return " + ".join(parts)


def breaks(cells: Sequence[dict[str, Any] | None], labels: Sequence[str]) -> str:
    """First column (after the first, the reference) that diverges or loses > 2 points."""
    ref = cells[0]
    if ref is None or ref["mean"] is None:
        return "–"
    for cell, label in zip(cells[1:], labels[1:]):
        if cell is None:
            continue
        if cell["diverged_steps"]:
            return f"diverges at {label}"
        if cell["mean"] is not None and 100 * (ref["mean"] - cell["mean"]) > BREAK_POINTS:
            return f"{100 * (ref['mean'] - cell['mean']):.1f} pts lower at {label}"
    measured = [lab for c, lab in zip(cells[1:], labels[1:]) if c is not None]
    return f"holds to {measured[-1]}" if measured else "–"


def sweep_markdown(sweep, records: Sequence[dict[str, Any]], total: int) -> str:
    """The sweep's tables (generated; docs/results.md includes them verbatim)."""
    from lmsgd.experiments.presets import RECIPES as recipes
    from lmsgd.experiments.sweep import is_final

    final = [r for r in records if is_final(r, sweep)]
    cells = sweep_cells(sweep, final)
    batches = sorted(sweep.batch_sizes)
    blabels = [f"{b:,}" for b in batches]
    seeds = sorted({r["point"]["seed"] for r in final})
    evals = sorted({r["eval_examples"] for r in final if r.get("eval_examples")})
    held_out = "/".join(f"{n:,}" for n in evals) or "all"
    lines = [
        f"Runs in: {len(final)} of {total} "
        f"({sum(r['status'] == 'diverged' for r in final)} diverged); seeds {seeds or '-'}. "
        f"Cells: final top-1 % on the {held_out} held-out images, mean ±half the range over seeds "
        "(number of seeds); diverged runs are counted and named, not averaged.",
        "",
        "Top-1 against global batch size (fixed epoch budget, each recipe's scaled rate, "
        f"BN over {sweep.bn_examples} images):",
        "",
        "| recipe | "
        + " | ".join(f"batch {b}" for b in blabels)
        + " | breaks (> 2 pts or diverges) |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for key in sweep.batch_recipes:
        row = [cells.get((key, b, 1.0)) for b in batches]
        lines.append(
            f"| {recipes[key].label} | " + " | ".join(cell_text(c) for c in row)
            + f" | {breaks(row, blabels)} |"
        )  # fmt: skip
    mults = sorted(sweep.lr_multipliers)
    mlabels = [f"x{m:g}" for m in mults]
    lines += [
        "",
        f"Top-1 against peak learning rate at batch {sweep.lr_batch:,} "
        "(multiples of the recipe's scaled rate):",
        "",
        "| recipe | base rate at x1 | " + " | ".join(mlabels) + " | breaks (> 2 pts or diverges) |",
        "|---|---|" + "---|" * (len(mults) + 1),
    ]
    for key in sweep.lr_recipes:
        row = [cells.get((key, sweep.lr_batch, float(m))) for m in mults]
        base = next((c["base_learning_rate"] for c in row if c is not None), None)
        base_x1 = None if base is None or row[0] is None else row[0]["base_learning_rate"]
        lines.append(
            f"| {recipes[key].label} | {'–' if base_x1 is None else f'{base_x1:.4g}'} | "
            + " | ".join(cell_text(c) for c in row) + f" | {breaks(row, mlabels)} |"
        )  # fmt: skip
    walls = sorted(r["wall_time_s"] for r in final if r.get("wall_time_s"))
    if walls:
        lines += [
            "",
            f"Wall time per run: median {duration(walls[len(walls) // 2])}, "
            f"range {duration(walls[0])}-{duration(walls[-1])}, "
            f"{duration(sum(walls))} in all (process start, data, compilation, training, "
            "evaluations; shared 2-core machine, see each record's load_average_end).",
        ]
    return "\n".join(lines) + "\n"


def sweep_figures(sweep, records: Sequence[dict[str, Any]], results_dir: pathlib.Path) -> dict:
    """accuracy_vs_batch.png and accuracy_vs_lr.png: mean with min-max error bars per recipe,
    each seed a dot, diverged runs an x at chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmsgd.experiments.presets import RECIPES as recipes
    from lmsgd.experiments.sweep import is_final

    final = [r for r in records if is_final(r, sweep)]
    cells = sweep_cells(sweep, final)
    colors = {key: plt.get_cmap("tab10")(i) for i, key in enumerate(recipes)}
    paths = {
        "batch": results_dir / "accuracy_vs_batch.png",
        "lr": results_dir / "accuracy_vs_lr.png",
    }
    panels = (
        ("batch", sweep.batch_recipes, sorted(sweep.batch_sizes), lambda k, x: (k, x, 1.0),
         "global batch size (log scale)",
         f"top-1 against batch size (BN over {sweep.bn_examples} images)"),
        ("lr", sweep.lr_recipes, sorted(sweep.lr_multipliers),
         lambda k, x: (k, sweep.lr_batch, float(x)),
         "peak learning rate / the recipe's scaled rate (log scale)",
         f"top-1 against learning rate at batch {sweep.lr_batch:,}"),
    )  # fmt: skip
    for kind, keys, xs, key_of, xlabel, title in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, key in enumerate(keys):
            shift = 1 + 0.02 * (i - (len(keys) - 1) / 2)  # keep error bars apart
            pts = [(x, cells.get(key_of(key, x))) for x in xs]
            ok = [(x, c) for x, c in pts if c is not None and c["mean"] is not None]
            color = colors[key]
            if ok:
                ax.errorbar(
                    [x * shift for x, _ in ok],
                    [100 * c["mean"] for _, c in ok],
                    yerr=[[100 * (c["mean"] - c["min"]) for _, c in ok],
                          [100 * (c["max"] - c["mean"]) for _, c in ok]],
                    color=color, marker="o", capsize=3, label=recipes[key].label,
                )  # fmt: skip
                for x, c in ok:
                    ax.scatter([x * shift] * len(c["top1"]), [100 * t for t in c["top1"]],
                               color=color, s=8, alpha=0.5)  # fmt: skip
            div = [(x, c) for x, c in pts if c is not None and c["diverged_steps"]]
            for x, c in div:
                ax.scatter([x * shift] * len(c["diverged_steps"]),
                           [100 * CHANCE_TOP1] * len(c["diverged_steps"]),
                           color=color, marker="x", s=60)  # fmt: skip
        ax.axhline(100 * CHANCE_TOP1, color="grey", lw=0.8, ls=":")
        ax.text(xs[0], 100 * CHANCE_TOP1 + 1, "chance / x = diverged", fontsize=7, color="grey")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" if kind == "batch" else f"x{x:g}" for x in xs])
        ax.set(xlabel=xlabel, ylabel="final test top-1 (%)", title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        preset = sweep.preset
        fig.suptitle(f"sweep {sweep.name} (preset {preset}; REDUCED protocol)"
                     if preset != "full" else f"sweep {sweep.name}", fontsize=8)  # fmt: skip
        fig.tight_layout()
        fig.savefig(paths[kind], dpi=90)
        plt.close(fig)
    return paths


def write_sweep_outputs(sweep, records: Sequence[dict[str, Any]], results_dir: pathlib.Path):
    """results.md (the tables) and the two figures, from every record of the sweep."""
    from lmsgd.experiments.presets import get_preset
    from lmsgd.experiments.sweep import plan

    p = get_preset(sweep.preset)
    text = (
        f"## Sweep `{sweep.name}`: top-1 against batch size and learning rate\n\n"
        f"Protocol (preset `{p.name}`{', REDUCED' if p.reduced else ''}): {p.description}.\n\n"
        + sweep_markdown(sweep, records, total=len(plan(sweep)))
    )
    (results_dir / "results.md").write_text(text)
    return sweep_figures(sweep, records, results_dir)
