"""Help that helps: every module command answers --help with its usage (exit 0), and
`--help_keys` lists every key of a config with its value, type and one-line meaning."""

import subprocess
import sys

import pytest

from tests.test_launch import REPO


def module_commands() -> list[str]:
    """Every `python -m lmsgd...` command: packages with a __main__.py and modules that run
    as a script (`if __name__ == "__main__"`)."""
    found = set()
    for path in (REPO / "lmsgd").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if path.name == "__main__.py":
            found.add(".".join(parts[:-1]))
        elif 'if __name__ == "__main__"' in path.read_text():
            found.add(".".join(parts))
    return sorted(found)


COMMANDS = module_commands()


def test_every_module_command_is_found():
    assert {"lmsgd.train", "lmsgd.evaluate", "lmsgd.plan", "lmsgd.bench", "lmsgd.data.prepare",
            "lmsgd.layout", "lmsgd.models", "lmsgd.experiments.large_batch",
            "lmsgd.experiments.sweep"} <= set(COMMANDS)  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=180, cwd=REPO
    )


@pytest.mark.parametrize("module", COMMANDS)
def test_help_exits_0_with_usage(module):
    result = _run(module, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: python -m " + module in result.stdout, result.stdout


def test_key_listing_covers_every_key_of_base_config():
    """Independent of the listing: the keys come from walking `base_config()` itself."""
    import ml_collections

    from lmsgd.cli import format_keys
    from lmsgd.config import base_config

    def walk(cfg, prefix=""):
        for key, value in cfg.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    keys = dict(walk(base_config()))
    lines = format_keys(base_config()).splitlines()
    assert len(lines) == len(keys) > 60
    for line, (key, value) in zip(lines, keys.items(), strict=True):
        head, meaning = line.split("): ", 1)
        assert head.startswith(f"config.{key} = {value!r} ("), line
        assert meaning and "(not in the schema)" not in meaning, line


def test_help_keys_of_a_shipped_config_shows_its_values():
    result = _run("lmsgd.train", "--config", "imagenet_resnet50_akiba32k", "--help_keys")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "config.model.bn_virtual_batch_size = 32 (int): " in "\n".join(lines)
    assert any(line.startswith("config.allreduce.algorithm = 'auto' (str): ") for line in lines)
    missing = _run("lmsgd.train", "--config", "no_such_config", "--help_keys")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
