"""`python -m lmsgd.models [NAME] [--image_size N] [--num_classes N]`.

Without a name, lists the models with their parameter counts; with one, prints its parameter
count and forward GFLOPs per image from XLA's cost analysis.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> None:
    from lmsgd.models.registry import ARCHITECTURES, create_model
    from lmsgd.models.summary import abstract_variables, count_params, summarize

    parser = argparse.ArgumentParser(prog="python -m lmsgd.models", description=__doc__)
    parser.add_argument("name", nargs="?", choices=list(ARCHITECTURES))
    parser.add_argument("--image_size", type=int, default=None, help="224 ImageNet, 32 CIFAR")
    parser.add_argument("--num_classes", type=int, default=None, help="1000 ImageNet, 10 CIFAR")
    args = parser.parse_args(argv)

    def defaults(name):
        cifar = ARCHITECTURES[name][2] == "cifar"
        return (
            args.image_size or (32 if cifar else 224),
            args.num_classes or (10 if cifar else 1000),
        )

    if args.name is None:
        print(f"{'model':<18}{'params':>14}  classes")
        for name in ARCHITECTURES:
            size, classes = defaults(name)
            params = abstract_variables(create_model(name, num_classes=classes), size)["params"]
            print(f"{name:<18}{count_params(params):>14,}  {classes}")
        return
    size, classes = defaults(args.name)
    s = summarize(create_model(args.name, num_classes=classes), size)
    print(f"model:            {args.name} ({classes} classes)")
    print(f"parameters:       {s.num_params:,}")
    print(f"forward GFLOPs:   {s.forward_flops_per_image / 1e9:.2f} per image at {size}x{size}")
    print(f"  (= {s.forward_flops_per_image / 2e9:.2f} G multiply-adds; XLA cost analysis)")


if __name__ == "__main__":
    main()
