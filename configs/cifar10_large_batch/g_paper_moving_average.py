"""(g) Batch 1,280: recipe (f) with moving-average normalization — the ablation of the third
technique (batch-statistics-only BN).

    python -m lmsgd.data.prepare cifar10      # once; prints the folder
    python -m lmsgd.train --config configs/cifar10_large_batch/g_paper_moving_average.py:full \
        --workdir DIR --config.data.data_dir=$(python -m lmsgd.data.prepare cifar10)

Presets after the colon (`:full` default, `:quick`, `:tiny`) are those of
`python -m lmsgd.experiments.large_batch` (lmsgd/experiments/presets.py, `PRESETS`).
Hardware: 8 devices (8 GPUs, or 8 simulated CPU devices): 160 images per device.
Recipe: exactly (f_paper.py), except that BN keeps exponential moving averages (decay 0.9)
and evaluation uses them instead of the last batch's statistics.
Expected: not measured here (the paper argues moving averages lag behind the weights when a
run has only ~3,500 large steps).
"""

import pathlib

from lmsgd.experiments.presets import load_recipe


def get_config(preset="full"):
    config = load_recipe(pathlib.Path(__file__).with_name("f_paper.py"), preset)
    config.model.norm_mode = "moving_average"
    return config
