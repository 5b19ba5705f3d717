"""`python -m lmsgd.data.prepare cifar10`: unpack the shared CIFAR-10 JPEG folders once.

The archive (`cifar10-jpeg.tar.gz`, train/<class>/*.jpg and test/<class>/*.jpg) is looked up
in the folder $LMSGD_SHARED_DATA names (default: $LMSGD_CACHE_DIR/archives) and unpacked into
$LMSGD_CACHE_DIR (default ~/.cache/lmsgd), never into the repository. Prints the root to pass
as `--config.data.data_dir`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tarfile

ARCHIVE = "cifar10-jpeg.tar.gz"


def cache_dir() -> pathlib.Path:
    """Where lmsgd unpacks data: $LMSGD_CACHE_DIR, default ~/.cache/lmsgd."""
    return pathlib.Path(os.environ.get("LMSGD_CACHE_DIR", pathlib.Path.home() / ".cache" / "lmsgd"))


def shared_data_dir() -> pathlib.Path:
    """The folder holding dataset archives (cifar10-jpeg.tar.gz): $LMSGD_SHARED_DATA, default
    $LMSGD_CACHE_DIR/archives (a team's shared disk is the usual setting)."""
    return pathlib.Path(os.environ.get("LMSGD_SHARED_DATA", cache_dir() / "archives"))


def cifar10_root(archive: str | os.PathLike | None = None) -> pathlib.Path:
    """Unpacks the CIFAR-10 image folders (once) and returns the folder holding train/."""
    archive = pathlib.Path(archive) if archive else shared_data_dir() / ARCHIVE
    target = cache_dir() / "cifar10-jpeg"
    done = target / ".unpacked"
    if not done.exists():
        if not archive.exists():
            raise FileNotFoundError(
                f"{archive} not found: set LMSGD_SHARED_DATA to the folder holding {ARCHIVE}, "
                "or unpack CIFAR-10 as image folders yourself and pass data.data_dir"
            )
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        done.write_text("ok\n")
    roots = [p for p in [target, *sorted(target.iterdir())] if (p / "train").is_dir()]
    if not roots:
        raise FileNotFoundError(f"no train/ folder in {target}; delete it and rerun")
    return roots[0]


def main(argv: list[str]) -> None:
    if argv[1:] in (["-h"], ["--help"]):
        print(f"usage: python -m lmsgd.data.prepare cifar10\n\n{__doc__.strip()}")
        return
    if argv[1:] != ["cifar10"]:
        raise SystemExit("usage: python -m lmsgd.data.prepare cifar10")
    print(cifar10_root())


if __name__ == "__main__":
    main(sys.argv)
