"""The users' pages checked against the code: every config key they name exists (a moved key
is reported with its new place), every `python -m lmsgd...` command uses flags that command
has (tests/doc_refs.py extracts both)."""

from tests import doc_refs


def test_pages_name_only_existing_keys_and_flags():
    found = [
        p for source, text in doc_refs.sources().items() for p in doc_refs.problems(source, text)
    ]
    assert found == []


def test_extraction_is_not_vacuous():
    """The pages do mention keys and commands; the extractor sees the ones known to be there."""
    pages = doc_refs.sources()
    keys = {path for text in pages.values() for path, _ in doc_refs.config_keys(text)}
    cmds = [c for text in pages.values() for c in doc_refs.commands(text)]
    assert {"model.bn_virtual_batch_size", "allreduce.algorithm", "data.data_dir"} <= keys
    assert len(keys) > 40 and len(cmds) > 40
    paper = ["--config", "configs/imagenet_resnet50_akiba32k.py", "--workdir",
             "gs://BUCKET/akiba32k",
             "--config.data.data_dir=gs://BUCKET/tensorflow_datasets"]  # fmt: skip
    assert ("lmsgd.train", paper) in cmds


SNIPPET = """
Set `--config.model.bn_span=32`, or config.optimizer.beta_center = 5, or the
`optimizer.slow_start_boundaries` of the schedule; `--config.optimizer.momentum=0.95`.

    python -m lmsgd.train --config default --wrokdir /tmp/w \\
        --config.model.bn_virtual_batch_size=32
    python -m lmsgd.plan --config default --targett cpu:8
    python -m lmsgd.bench step --no_such_option 3
    python -m lmsgd.nothing_here
"""


def test_a_bad_key_a_moved_key_and_a_bad_flag_are_found():
    found = doc_refs.problems("snippet", SNIPPET)
    assert found == [
        "snippet: unknown config key config.model.bn_span",
        "snippet: unknown config key config.optimizer.beta_center; it belongs to "
        "config.optimizer.rmsprop_warmup.beta_center",
        "snippet: --config.optimizer.momentum=... sets a section, not a key",
        "snippet: unknown config key config.optimizer.slow_start_boundaries; it belongs to "
        "config.optimizer.slow_start.boundaries",
        "snippet: lmsgd.train: unknown flag --wrokdir",
        "snippet: lmsgd.plan: unknown flag --targett",
        "snippet: lmsgd.bench: unknown option --no_such_option",
        "snippet: no module lmsgd.nothing_here",
    ]


def test_quoted_figures_match_their_results_files():
    """Figures quoted on several pages come from one committed results file (tests/doc_figures)."""
    from tests import doc_figures

    assert doc_figures.problems() == []


def test_a_figure_that_differs_from_its_results_file_is_found():
    import json
    import re

    from tests import doc_figures

    figure = doc_figures.FIGURES[0]  # the v5p step time
    want = figure.value(json.loads((doc_figures.REPO / figure.results).read_text()))
    pages = doc_figures._pages()
    pattern = figure.quotes["README.md"]
    wrong = f"{float(want) + 0.8:.1f}"
    match = re.search(pattern, pages["README.md"])
    assert match and match.group(1) == want
    pages["README.md"] = (
        pages["README.md"][: match.start(1)] + wrong + pages["README.md"][match.end(1) :]
    )
    assert doc_figures.problems(pages) == [
        f"README.md: {figure.name} quoted as {wrong}, {figure.results} says {want}"
    ]
    pages["README.md"] = "no figures here"
    readme_quotes = sum("README.md" in f.quotes for f in doc_figures.FIGURES)
    readme_passages = sum(p.page == "README.md" for p in doc_figures.PASSAGES)
    assert readme_quotes >= 3 and readme_passages >= 4  # v5p, default run, sweep, H100
    assert len(doc_figures.problems(pages)) == readme_quotes + readme_passages


def test_a_passage_or_a_printed_table_that_differs_is_found():
    """A figure inside a several-figure passage, and a cell of a suite's printed table."""
    from tests import doc_figures

    pages = doc_figures._pages()
    scaling = pages["docs/scaling_out.md"]
    row = next(
        line for line in scaling.splitlines() if line.startswith("| two_dimensional | float16")
    )
    pages["docs/scaling_out.md"] = scaling.replace(row, row.replace("0.14%", "0.41%", 1))
    perf = pages["docs/performance.md"]
    line = next(x for x in perf.splitlines() if x.startswith("sgd_momentum "))
    pages["docs/performance.md"] = perf.replace(line, line.replace("20 / 16.0", "20 / 15.0"))
    found = doc_figures.problems(pages)
    assert len(found) == 2, found
    assert "0.41 where results/allreduce_scale/xla_e0.5.json says 0.14" in found[0]
    assert "row ['sgd_momentum'" in found[1] and doc_figures.OPT_CPU in found[1]


def test_every_figure_with_a_unit_is_sourced_or_allowed():
    """README and the performance, planning and scaling pages: every number with a unit of
    measurement is a registered quote of a results file, or named in doc_figures.ALLOWED (not
    a measurement of ours: a flag value, a published figure with its source, a test's bound)
    or doc_figures.PENDING / EXEMPT (to be sourced; the lists may only shrink)."""
    from tests import doc_figures

    assert doc_figures.unsourced() == []
    pending = (
        [a for a in doc_figures.PENDING]
        + [k for k, why in doc_figures.EXEMPT.items() if why.startswith("pending")]
        + sorted(doc_figures.AWAITING)
    )
    assert len(pending) <= PENDING_AT_MOST, pending


PENDING_AT_MOST = 10  # lower it as pending figures get their results files


def test_a_new_unsourced_figure_is_found():
    from tests import doc_figures

    pages = doc_figures._pages()
    pages["README.md"] += "\nOn one H100 a step takes 12.3 ms, 1.8x faster, using 4.2 GiB.\n"
    pages["docs/planning.md"] += "\n| new row | 97% | x0.93 |\n"
    lines = (pages["README.md"].count("\n"), pages["docs/planning.md"].count("\n"))
    before = set(doc_figures.unsourced())  # empty, as the test above asserts
    assert [x for x in doc_figures.unsourced(pages) if x not in before] == [
        f"README.md:{lines[0]}: '12.3 ms'", f"README.md:{lines[0]}: '1.8x'",
        f"README.md:{lines[0]}: '4.2 GiB'", f"docs/planning.md:{lines[1]}: '97%'",
        f"docs/planning.md:{lines[1]}: 'x0.93'",
    ]  # fmt: skip


def test_pages_name_only_existing_code_and_files():
    """Backticked `lmsgd.*` names, `Class.attr` of lmsgd's classes and repository paths."""
    found = [
        p
        for source, text in doc_refs.sources().items()
        for p in doc_refs.code_problems(source, text)
    ]
    assert found == []
    names = {r for text in doc_refs.sources().values() for r in doc_refs.code_references(text)}
    assert {"lmsgd.models.pooling", "ResNet.gpu_derivatives", "lmsgd/step.py"} <= names
    assert len(names) > 100


CODE_SNIPPET = """
The pool lives in `lmsgd.models.pooling` (`lmsgd.models.pooling.no_such_function`), with
`ResNet.gpu_derivatives` and `ResNet.gpu_derivative`; see `lmsgd/models/pooling.py`,
`lmsgd/models/pool.py`, `configs/imagenet_resnet50_akiba32k.py:gpu8`, `lmsgd.no_module`, the
ignored `results/sweep/work/`, and `jax.lax.psum` or `Mesh.devices` (not ours: unchecked).
"""


def test_a_missing_function_attribute_file_or_module_is_found():
    found = doc_refs.code_problems("snippet", CODE_SNIPPET)
    assert found == [
        "snippet: `lmsgd.models.pooling.no_such_function`: lmsgd.models.pooling has no "
        "no_such_function",
        "snippet: `ResNet.gpu_derivative`: ResNet has no gpu_derivative",
        "snippet: `lmsgd/models/pool.py`: no file or folder lmsgd/models/pool.py",
        "snippet: `lmsgd.no_module`: lmsgd has no no_module",
    ]
