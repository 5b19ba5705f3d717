"""What the users' pages say about the code, extracted and checked against it.

`references(text)` finds config key mentions (`--config.KEY=VALUE`, `config.KEY`, and section
paths like `optimizer.rmsprop_warmup.beta_center` in prose) and `python -m lmsgd...` shell
commands; `problems(source, text)` checks each key with the config schema and each command's
flags with that command's flags. tests/test_docs.py runs it over README.md, docs/, the configs'
headers, launch/ and the notebook.
"""

from __future__ import annotations

import ast
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("model", "optimizer", "data", "allreduce", "checkpoint", "logging")

# `config.a.b`, `--config.a.b=`, or a bare `section.key` path (not part of a module or file name).
_CONFIG_KEY = re.compile(r"(?<![\w/.<-])(?:--)?config\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_SECTION_KEY = re.compile(
    rf"(?<![\w/.<-])((?:{'|'.join(SECTIONS)})(?:\.[A-Za-z_]\w*)+)(?![\w/-]|\.\w|\()"
)
_FILE_SUFFIXES = (".py", ".json", ".md", ".jsonl", ".txt", ".yaml")
# Methods and attributes of a ConfigDict that code on these pages calls, not keys.
_CONFIG_METHODS = {
    *("lock", "unlock", "unlocked", "copy_and_resolve_references", "to_dict", "to_json"),
    *("get", "update", "ignore_type", "items", "keys", "values"),
}
_COMMAND = re.compile(r"python3? -m (lmsgd(?:\.\w+)+)((?:[^\n`|;&)]|\\\n)*)")


def sources() -> dict[str, str]:
    """Page name -> text: README, docs, configs' module docstrings, launch/, the notebook."""
    out = {"README.md": (REPO / "README.md").read_text()}
    for path in sorted((REPO / "docs").glob("*.md")):
        out[f"docs/{path.name}"] = path.read_text()
    for path in sorted((REPO / "configs").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out[str(path.relative_to(REPO))] = doc
    for path in sorted((REPO / "launch").rglob("*")):
        if path.is_file():
            out[str(path.relative_to(REPO))] = path.read_text()
    out["notebooks/explore.py"] = (REPO / "notebooks" / "explore.py").read_text()
    return out


def key_paths() -> tuple[set[str], set[str]]:
    """(every key path, every section path) of `base_config()`, without `config.`."""
    import ml_collections

    from lmsgd.config import base_config

    keys, sections = set(), set()

    def walk(cfg, prefix: str) -> None:
        for key, value in cfg.items():
            if isinstance(value, ml_collections.ConfigDict):
                sections.add(prefix + key)
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(prefix + key)

    walk(base_config(), "")
    return keys, sections


def config_keys(text: str) -> list[tuple[str, bool]]:
    """`(key path without config., assigned)` of every mention in `text`, in order,
    de-duplicated; `assigned`: `--config.PATH=VALUE` (then PATH must be a key, not a
    section)."""
    found: list[tuple[str, bool]] = []
    for match in _CONFIG_KEY.finditer(text):
        path = match.group(1)
        end = text[match.end() : match.end() + 1]
        if end == "(" or path.split(".")[-1] in _CONFIG_METHODS:
            path = ".".join(path.split(".")[:-1])  # `config.model.copy_and_resolve...(`
            end = ""
        assigned = match.group(0).startswith("--") and end == "="
        if path and not path.endswith(_FILE_SUFFIXES) and path not in ("py", "json"):
            found.append((path, assigned))
    for match in _SECTION_KEY.finditer(text):
        if not match.group(1).endswith(_FILE_SUFFIXES):
            found.append((match.group(1), False))
    return list(dict.fromkeys(found))


def commands(text: str) -> list[tuple[str, list[str]]]:
    """`(module, args)` of every `python -m lmsgd...` command, continuation lines joined."""
    out = []
    for match in _COMMAND.finditer(text):
        rest = re.sub(r"\\\n\s*(#\s*)?", " ", match.group(2)).split("#")[0]
        try:
            words = shlex.split(rest)
        except ValueError:  # an unbalanced quote in prose: take the words up to it
            words = rest.split()
        out.append((match.group(1), words))
    return out


# `--config.key=value`: how the pages write "any key".
PLACEHOLDERS = {"key", "KEY"}

# Each command's flags (the absl commands share --config, --workdir, --verbose, --help).
_COMMON = {"config", "workdir", "verbose", "help", "help_keys"}
FLAGS = {
    "lmsgd.train": _COMMON,
    "lmsgd.evaluate": _COMMON | {"step"},
    "lmsgd.layout": {"config", "devices", "processes", "help"},
    "lmsgd.plan": {
        "config",
        "target",
        "json",
        "dump_hlo",
        "measure",
        "max_batch",
        "input_rates",
        "workdir",
        "help",
    },
}


def _argparse_problems(module: str, args: list[str]) -> list[str]:
    """Options of an argparse command: lmsgd.bench's parser (all suites), else the option
    strings its `__main__` defines."""
    import importlib.util

    if module == "lmsgd.bench":
        from lmsgd.bench.__main__ import build_parser

        parser = build_parser()
        known = {o for action in parser._actions for o in action.option_strings}
        for sub in parser._subparsers._group_actions if parser._subparsers else []:
            for choice in getattr(sub, "choices", {}).values():
                known |= {o for action in choice._actions for o in action.option_strings}
    else:
        # The options its package defines (a command may take its parser from a sibling).
        spec = importlib.util.find_spec(module)
        folder = pathlib.Path(spec.origin).parent
        source = "\n".join(f.read_text() for f in sorted(folder.glob("*.py")))
        known = set(re.findall(r"[\"'](--[\w-]+)[\"']", source)) | {"--help"}
    options = [a.split("=")[0] for a in args if re.match(r"--\w", a)]
    return [f"{module}: unknown option {o}" for o in options if o not in known]


def _prepare_problems(args: list[str]) -> list[str]:
    """`lmsgd.data.prepare` parses the command as written (its dataset, options, --format)."""
    import contextlib
    import io

    from lmsgd.data.prepare import build_parser

    # Usage notation: `<placeholder words>` is one value, `[--opt X]` optional, `a|b` choices.
    text = re.sub(r"<[^>]*>", "VALUE", " ".join(args)).replace("[", " ").replace("]", " ")
    args = [w.replace("\\|", "|").split("|")[0].rstrip("\\") for w in text.split()]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as e:
        if e.code:
            return [f"lmsgd.data.prepare {' '.join(args)}: {err.getvalue().strip()}"]
    return []


def command_problems(module: str, args: list[str]) -> list[str]:
    """Unknown modules, unknown flags and bad config keys of one command."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return [f"no module {module}"]
    if module == "lmsgd.data.prepare":
        return _prepare_problems(args)
    if module not in FLAGS:
        return _argparse_problems(module, args)
    problems = []
    for arg in args:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg[2:].split("=")[0]
        if name.startswith("config."):
            continue  # checked with the other keys
        if name not in FLAGS[module] and name.removeprefix("no") not in FLAGS[module]:
            problems.append(f"{module}: unknown flag --{name}")
    return problems


def problems(source: str, text: str) -> list[str]:
    """Every key the schema does not know (with its new place, if it moved) and every bad
    command-line flag in `text`, each as `source: message`."""
    from lmsgd.config import where_it_went

    keys, sections = key_paths()
    # Recipes a page registers in its own example (`register_optimizer(Recipe(name="adamw"`).
    examples = set(re.findall(r'\bname="(\w+)"', text))
    out = []
    for path, assigned in config_keys(text):
        if assigned and path in sections:
            out.append(f"{source}: --config.{path}=... sets a section, not a key")
            continue
        if path in keys or path in sections or path in PLACEHOLDERS:
            continue
        parts = path.split(".")
        if parts[0] == "optimizer" and len(parts) > 1 and parts[1] in examples:
            continue
        if re.search(rf"config\.{re.escape(path)} belongs to", text):
            continue  # the page quotes the moved-key message itself
        homes = where_it_went(path)
        hint = f"; it belongs to {' or '.join(homes)}" if homes else ""
        out.append(f"{source}: unknown config key config.{path}{hint}")
    for module, args in commands(text):
        out += [f"{source}: {p}" for p in command_problems(module, args)]
    return out


# --- names of code and files --------------------------------------------------------------

# Repository folders a page may point into (`lmsgd/models/pooling.py`, `results/plan/`).
_REPO_DIRS = ("lmsgd", "tests", "docs", "configs", "launch", "notebooks", "results", "requirements")
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_PYTHON_NAME = re.compile(r"lmsgd(?:\.[A-Za-z_]\w*)+")
_CLASS_ATTR = re.compile(r"([A-Z]\w*)\.([a-z_]\w*)")


def code_references(text: str) -> list[str]:
    """Backticked code names in `text`: `lmsgd.module[.attr]`, `Class.attr` and repository
    paths (`lmsgd/step.py`, `configs/x.py:preset`, `results/plan/`), in order, de-duplicated.
    Paths with placeholders or globs (`<`, `*`, `{`) and module commands are not names."""
    found = []
    for token in _BACKTICKED.findall(text):
        token = token.rstrip(".,;:()")
        path = "/" in token and token.split("/")[0] in _REPO_DIRS and not set("<*{$") & set(token)
        if path or _PYTHON_NAME.fullmatch(token) or _CLASS_ATTR.fullmatch(token):
            found.append(token)
    return list(dict.fromkeys(found))


def _classes() -> dict[str, set[str]]:
    """Class name -> the names its body defines (fields, methods), over lmsgd/, with the
    names of its lmsgd base classes."""
    bodies: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for path in (REPO / "lmsgd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            names = bodies.setdefault(node.name, set())
            bases.setdefault(node.name, []).extend(
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            )
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    names |= {t.id for t in item.targets if isinstance(t, ast.Name)}

    def inherited(name: str, seen: frozenset = frozenset()) -> set[str]:
        out = set(bodies.get(name, ()))
        for base in bases.get(name, ()):
            if base in bodies and base not in seen:
                out |= inherited(base, seen | {name})
        return out

    return {name: inherited(name) for name in bodies}


def _python_name_problem(name: str) -> str | None:
    """None where `lmsgd.a.b.c` imports (the longest module prefix) and the rest resolves."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for i, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[: cut + i])} has no {attr}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]}"


def _exists_or_ignored(path: str) -> bool:
    """In the checkout, or a place a command creates that git ignores (`results/sweep/work/`)."""
    import subprocess

    if (REPO / path).exists():
        return True
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def code_problems(source: str, text: str, classes: dict[str, set[str]] | None = None) -> list[str]:
    """Every backticked code name or repository path in `text` that the code does not have.
    A `Class.attr` is checked only where lmsgd defines a class of that name."""
    classes = _classes() if classes is None else classes
    out = []
    for ref in code_references(text):
        if _PYTHON_NAME.fullmatch(ref):
            problem = _python_name_problem(ref)
        elif (m := _CLASS_ATTR.fullmatch(ref)) and "/" not in ref:
            cls, attr = m.groups()
            problem = None if cls not in classes or attr in classes[cls] else f"{cls} has no {attr}"
        else:
            path = ref.split(":")[0]
            problem = None if _exists_or_ignored(path) else f"no file or folder {path}"
        if problem:
            out.append(f"{source}: `{ref}`: {problem}")
    return out
