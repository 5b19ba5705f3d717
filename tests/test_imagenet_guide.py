"""docs/imagenet.md, run: every command in its `bash` blocks, in the page's order, on a
miniature ILSVRC written in the real layouts (tests/helpers.py), with the page's paths mapped
to temporary folders and SHRINK's flags added (a small model, 16 px images, 16 images per
step on 8 simulated devices). The launchers run with `--dry-run`.

Fast: every command of the page has a runner here (a new command without one fails). Slow: the
whole guide, in order: prepare both formats, the short run, the planner beside it, the
launchers, the resumed run, the evaluation.
"""

import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import tomllib

import pytest
from helpers import MINI_VAL, write_mini_ilsvrc

REPO = pathlib.Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "imagenet.md"

# Flags added to the driver, the planner and the evaluation: the paper's config at CPU size.
SHRINK = [
    "--config.model.name=resnet18", "--config.model.width_multiplier=0.25",
    "--config.data.image_size=16", "--config.global_batch_size=16",
    "--config.eval_batch_size=16", "--config.accumulation_steps=1",
    "--config.model.bn_virtual_batch_size=2", "--config.logging.tensorboard=False",
    "--config.checkpoint.async_save=False",
]  # fmt: skip


def guide_commands(text: str) -> list[str]:
    """The commands of the page's `bash` blocks (continuation lines joined), in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    """(leading NAME=value assignments, the words of the command) as a shell reads them."""
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def _kind(words: list[str]) -> str:
    if words[:2] == ["pip", "install"]:
        return "install"
    if words[:3] == ["python", "-m", "lmsgd.train"] and "--help_keys" in words:
        return "help_keys"
    if words[:2] == ["python", "-m"] and words[2] in (
        "lmsgd.data.prepare", "lmsgd.train", "lmsgd.plan", "lmsgd.evaluate"
    ):  # fmt: skip
        return words[2]
    if words[0] == "launch/tpu_pod.sh":
        return "tpu_pod"
    if words[:2] == ["sbatch", "launch/slurm_gpu.sbatch"]:
        return "slurm"
    return "unknown"


def test_every_command_of_the_guide_has_a_runner():
    commands = guide_commands(GUIDE.read_text())
    kinds = [_kind(_split(c)[1]) for c in commands]
    assert "unknown" not in kinds, commands[kinds.index("unknown")]
    # The guide's path: install, prepare (both formats), train, plan, launch, resume, evaluate.
    assert kinds == [
        "install", "lmsgd.data.prepare", "lmsgd.data.prepare", "lmsgd.train", "lmsgd.plan",
        "tpu_pod", "slurm", "lmsgd.train", "lmsgd.evaluate", "help_keys",
    ]  # fmt: skip


def test_help_keys_lists_every_key_of_the_guides_table():
    (command,) = [c for c in guide_commands(GUIDE.read_text()) if "--help_keys" in c]
    text = _run([sys.executable, *_split(command)[1][1:]], {})
    table = GUIDE.read_text().split("## 8. The keys")[1].split("\n## ")[0]
    keys = re.findall(r"^\| `([\w.]+)` \|", table, re.M)
    assert len(keys) >= 8
    for key in keys:
        assert re.search(rf"^config\.{re.escape(key)} = ", text, re.M), key
    # The values the table gives for the paper's config.
    assert "config.data.name = 'imagenet2012' (str)" in text
    assert "config.data.image_size = 224 (int)" in text
    assert "config.data.file_format = 'array_record' (str)" in text


def test_the_install_extra_is_the_one_ci_installs():
    """`pip install -e '.[data]'`: CI installs `.[test]` (.ci/run), which includes it."""
    words = _split(guide_commands(GUIDE.read_text())[0])[1]
    assert words[:3] == ["pip", "install", "-e"]
    extras = re.fullmatch(r"\.\[([\w,]+)\]", words[3]).group(1).split(",")
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    included = re.fullmatch(r"lmsgd\[([\w,]+)\]", optional["test"][0]).group(1).split(",")
    assert extras == ["data"] and set(extras) <= set(included)
    assert "-e '.[test]'" in (REPO / ".ci" / "run").read_text()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHON=sys.executable,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")  # fmt: skip
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    return env


def _run(argv: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        argv, cwd=REPO, env={**_env(), **env}, capture_output=True, text=True, timeout=1200
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{shlex.join(argv)}\n{text[-4000:]}"
    return text


@pytest.mark.slow
def test_the_guide_runs_end_to_end_on_a_miniature_ilsvrc(tmp_path):
    facts = write_mini_ilsvrc(tmp_path / "ilsvrc")
    paths = {
        "/data/ilsvrc": tmp_path / "ilsvrc", "/data/tfds": tmp_path / "tfds",
        "/data/imagenet": tmp_path / "imagenet", "/tmp/smoke": tmp_path / "smoke",
    }  # fmt: skip

    def mapped(word: str) -> str:
        for doc_path, here in paths.items():
            word = re.sub(rf"{re.escape(doc_path)}(?=$|/)", str(here), word)
        return word

    outputs: list[tuple[str, str]] = []
    for command in guide_commands(GUIDE.read_text()):
        env, words = _split(command)
        words = [mapped(w) for w in words]
        kind = _kind(words)
        if kind in ("install", "help_keys"):
            continue  # the fast tests above run these
        if kind.startswith("lmsgd."):
            extra = SHRINK if kind != "lmsgd.data.prepare" else []
            text = _run([sys.executable, *words[1:], *extra], env)
        elif kind == "tpu_pod":
            cut = words.index("--")
            text = _run(["bash", *words[:cut], "--dry-run", *words[cut:]], env)
        else:  # slurm: outside SLURM, the script prints its srun command
            text = _run(["bash", words[1], "--dry-run", *words[2:]], env)
        outputs.append((kind, text))

    smoke = paths["/tmp/smoke"]
    by_kind = {}
    for kind, text in outputs:
        by_kind.setdefault(kind, []).append(text)
    # Prepare: the settings it prints are those the later commands pass.
    tfds_out, folders_out = by_kind["lmsgd.data.prepare"]
    settings = f"--config.data.name=imagenet2012 --config.data.data_dir={paths['/data/tfds']}"
    assert settings in tfds_out, tfds_out[-2000:]
    synsets = sorted(p.name for p in (paths["/data/imagenet"] / "train").iterdir())
    assert synsets == facts["synsets"]
    val = sum(len(list(p.iterdir())) for p in (paths["/data/imagenet"] / "val").iterdir())
    assert val == MINI_VAL and "--config.data.name=image_folder" in folders_out
    # The short run: 10 steps, a checkpoint at 10; the resumed run takes it from there to 20.
    first, resumed = by_kind["lmsgd.train"]
    assert "stop_after_steps=10 reached" in first and "resumed from" not in first
    assert "resumed from checkpoint 10" in resumed and "stop_after_steps=20 reached" in resumed
    assert re.search(r"step\s+10/270 .* img/s \([\d,]+/device\)", first), first[-2000:]
    # The planner beside the run: its measured step is the median of the logged intervals
    # without a compile, as metrics.jsonl holds them when it ran (steps 2-10).
    import json

    records = [json.loads(line) for line in (smoke / "metrics.jsonl").read_text().splitlines()]
    steady = [
        r["step_time_s"] for r in records
        if r["kind"] == "train" and r["step"] <= 10 and r["compile_s"] == 0
    ]  # fmt: skip
    assert 3 <= len(steady) <= 4  # steps 4, 6, 8, 10; the first interval compiles
    (plan,) = by_kind["lmsgd.plan"]
    m = re.search(
        rf"measured in {re.escape(str(smoke))} \(median of (\d+) logged intervals without a "
        r"compile, up to step 10\): step ([\d.]+) (ms|s), ",
        plan,
    )
    assert m, plan[-3000:]
    assert int(m.group(1)) == len(steady)
    seconds = float(m.group(2)) * (1e-3 if m.group(3) == "ms" else 1)
    assert seconds == pytest.approx(statistics.median(steady), rel=5e-3)
    est = re.search(r"\n  step ([\d.]+) (ms|s)  ", plan)
    est_s = float(est.group(1)) * (1e-3 if est.group(2) == "ms" else 1)
    ratio = float(re.search(r"measured / estimate = ([\d.e+-]+)", plan).group(1))
    assert ratio == pytest.approx(statistics.median(steady) / est_s, rel=2e-2)
    # The launchers: the layout they will run, and the data flag handed to every host.
    (tpu,) = by_kind["tpu_pod"]
    assert "gcloud compute tpus tpu-vm create akiba" in tpu and "v5p-256" in tpu
    assert "--config.data.data_dir=/mnt/tfds" in tpu
    assert re.search(r"# layout: .*BN over 32", tpu), tpu[:2000]
    (slurm,) = by_kind["slurm"]
    assert "srun" in slurm and "--config.data.data_dir=/nfs/tfds" in slurm
    assert re.search(r"# layout: .*BN over 32", slurm), slurm[:2000]
    # The evaluation: of the latest checkpoint (step 20), every validation image once.
    (evaluation,) = by_kind["lmsgd.evaluate"]
    result = json.loads([ln for ln in evaluation.splitlines() if ln.startswith("{")][-1])
    assert result["step"] == 20 and result["num_examples"] == MINI_VAL, evaluation[-2000:]
    assert 0 <= result["top1"] <= result["top5"] <= 1
