"""`python -m lmsgd.data.prepare DATASET`: put a dataset where training reads it, once.

`cifar10`: unpack the shared CIFAR-10 JPEG folders. `imagenet2012 --manual_dir DIR
[--data_dir DIR] [--format array_record|tfrecord|folders]`: the ILSVRC2012 tars to TFDS
ArrayRecord (default), TFDS TFRecord or image folders (see lmsgd.data.imagenet_prepare and
docs/imagenet.md). Both print the `--config.data.*` settings to train with.

CIFAR-10: the archive (`cifar10-jpeg.tar.gz`, train/<class>/*.jpg and test/<class>/*.jpg) is
looked up in the folder $LMSGD_SHARED_DATA names (default: $LMSGD_CACHE_DIR/archives) and
unpacked into $LMSGD_CACHE_DIR (default ~/.cache/lmsgd), never into the repository. Prints the
root to pass as `--config.data.data_dir`.
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


def build_parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, no usage block
            self.exit(2, f"lmsgd.data.prepare: error: {message} (see --help)\n")

    parser = Parser(
        prog="python -m lmsgd.data.prepare",
        description=__doc__.strip().splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="dataset", metavar="{cifar10,imagenet2012}", required=True,
                                parser_class=Parser)  # fmt: skip
    sub.add_parser("cifar10", help="unpack cifar10-jpeg.tar.gz ($LMSGD_SHARED_DATA)")
    imnet = sub.add_parser("imagenet2012", help="ILSVRC2012 tars -> ArrayRecord, TFRecord "
                           "or image folders")  # fmt: skip
    imnet.add_argument(
        "--manual_dir",
        required=True,
        help="folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
    )
    imnet.add_argument(
        "--data_dir",
        default=None,
        help="where to write (array_record/tfrecord: the TFDS data_dir, default "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets; folders: required)",
    )
    imnet.add_argument("--format", default="array_record",
                       choices=("array_record", "tfrecord", "folders"),
                       help="array_record (default: random access, any number of hosts "
                            "read one order), tfrecord, or folders (train/ and val/)")  # fmt: skip
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv[1:])
    if args.dataset == "cifar10":
        print(cifar10_root())
        return
    from lmsgd.data import imagenet_prepare

    imagenet_prepare.main(args)


if __name__ == "__main__":
    main(sys.argv)
