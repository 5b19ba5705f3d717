"""Every key of the schema can be set with --config.key=value on every shipped config, and
every command-line mistake is one line naming the key or file, without a traceback."""

import pathlib
import subprocess
import sys

import pytest

from lmsgd import cli
from lmsgd.config import SECTIONS, TOP
from lmsgd.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.py") if p.name != "__init__.py"
)


def _as_flag(value) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _new_values(spec, current):
    """Valid values other than `current`, from the key's own table (example, default,
    choices) and simple variations."""
    candidates = [spec.example, spec.default, *getattr(spec.check, "choices", ()), True, False]
    if isinstance(current, bool):
        candidates.append(not current)
    elif isinstance(current, (int, float)):
        candidates += [current * 2, current + 1, current / 2, 1, 2, 0.5]
    elif isinstance(current, str):
        candidates.append(current + "_2")
    elif isinstance(current, tuple) and current:
        candidates.append(tuple(type(v)(v * 2) if v else v for v in current))
        candidates.append(tuple(v / 2 for v in current))
    return [c for c in candidates if c is not None and c != current and spec.check(c)]


def _every_key():
    for key, spec in TOP.keys.items():
        yield key, spec
    for name, section in SECTIONS.items():
        for key, spec in section.keys.items():
            yield f"{name}.{key}", spec


@pytest.mark.parametrize("config_file", CONFIGS)
def test_every_schema_key_is_settable_from_the_command_line(config_file, tmp_path):
    arg = config_file + (":quick" if "cifar10_large_batch" in config_file else "")
    base, _ = cli.parse(["prog", f"--config={arg}", f"--workdir={tmp_path}"])
    for path, spec in _every_key():
        current = base
        for part in path.split("."):
            current = current[part]
        values = _new_values(spec, current)
        assert values, path
        errors = []
        for value in values:  # the first that also satisfies the rules involving other keys
            flag = f"--config.{path}={_as_flag(value)}"
            try:  # validated: command-line 'True'/'False' of 'auto'-or-bool keys become bools
                config, _ = cli.parse(["prog", f"--config={arg}", f"--workdir={tmp_path}", flag])
            except ConfigError as e:
                # A rule that ties this key to another (e.g. ghost BN needs bn_group_size=1):
                # the value arrived and the message names both keys.
                if f"config.{path}" in str(e) and ("needs" in str(e) or "required" in str(e)):
                    break
                errors.append(str(e))
                continue
            got = config
            for part in path.split("."):
                got = got[part]
            expected = tuple(value) if isinstance(value, list) else value
            assert got == expected, (path, value, got)
            assert type(got) is type(expected) or isinstance(expected, (int, float)), path
            break
        else:
            raise AssertionError(f"no value of {path} could be set: {errors}")


BAD = [
    (["--config.foo=1"], "config.foo"),
    (["--config.model.nme=x"], "config.model.nme; did you mean 'name'"),
    (["--config.global_batch_size=-8"], "config.global_batch_size=-8"),
    (["--config.global_batch_size=0"], "config.global_batch_size=0"),
    (["--config.global_batch_size=100"], "global_batch_size=100 is not divisible by the 8"),
    (["--config.optimizer.lr_per_256=nan"], "config.optimizer.lr_per_256=nan"),
    (["--config.model.name=resnet5O"], "did you mean 'resnet50'"),
    (["--config.data.name=image_folder", "--config.data.data_dir=/nonexistent_lmsgd"],
     "/nonexistent_lmsgd"),
    (["--config.optimizer.slow_start.factors=(1.0,)"], "slow_start.factors has 1"),
    # Moved keys name their new place (docs/optimizer.md); a value for a section says so.
    (["--config.optimizer.beta_center=5"], "config key config.optimizer.beta_center belongs to "
     "a recipe's own section: config.optimizer.rmsprop_warmup.beta_center"),
    (["--config.optimizer.rmsprop_decay=0.9"], "belongs to a recipe's own section: "
     "config.optimizer.rmsprop_warmup.decay"),
    (["--config.optimizer.momentum=0.95"], "config.optimizer.momentum is a section, not a "
     "value (keys: momentum): set --config.optimizer.momentum.momentum=0.95; a key of this name "
     "is in config.optimizer.rmsprop_warmup.momentum"),
    (["--config.bn_group_size=2"], "belongs to a section: config.model.bn_group_size"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "named"), BAD)
def test_cli_errors_are_one_line_without_traceback(tmp_path, extra, named):
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", "--config=configs/default.py",
         f"--workdir={tmp_path}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text, text[-2000:]
    assert named in text, text[-2000:]
    assert "lmsgd.train: error:" in out.stderr


def test_missing_and_broken_config_files_are_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from lmsgd.config import base_config\ndef get_config():\n    c = base_config()\n"
        "    c.model.nmae = 'x'\n    return c\n"
    )
    for spec, named in [(str(tmp_path / "nope.py"), "nope.py' not found"),
                        (str(broken), "broken.py' failed to load")]:  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "lmsgd.train", f"--config={spec}", f"--workdir={tmp_path}"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert named in out.stderr, out.stderr[-2000:]
    assert "line 4" in out.stderr  # the typo's own line (the config is locked)
    verbose = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", f"--config={broken}", f"--workdir={tmp_path}",
         "--verbose"], cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" in verbose.stderr
