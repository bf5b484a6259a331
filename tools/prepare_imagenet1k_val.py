"""Sort ImageNet-1K's flat validation folder into class folders val/<wnid>/ (hard links; the
flat files stay). Labels from the devkit or from Kaggle's LOC_val_solution.csv:

    .venv/bin/python tools/prepare_imagenet1k_val.py /data/imagenet/val --devkit /data/ILSVRC2012_devkit_t12
    .venv/bin/python tools/prepare_imagenet1k_val.py /data/imagenet/val --solution /data/LOC_val_solution.csv

Nothing is written unless every image has a label and every class its 50 images; a rerun
finishes an interrupted one.
"""
import argparse
import sys

from teddy.errors import TeddyError
from teddy.imagenet_val import sort_val_from


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("val", help="the flat folder of ILSVRC2012_val_*.JPEG")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--devkit", help="the devkit folder (holds data/ILSVRC2012_validation_ground_truth.txt "
                                         "and data/meta.mat)")
    labels.add_argument("--solution", help="Kaggle's LOC_val_solution.csv")
    parser.add_argument("--dest", help="where the class folders go (default: the val folder itself)")
    parser.add_argument("--per-class", type=int, default=50, help="images expected per class (default 50)")
    parser.add_argument("--classes", type=int, default=1000, help="classes expected (default 1000)")
    args = parser.parse_args(argv)
    try:
        done = sort_val_from(args.val, devkit=args.devkit, solution=args.solution, dest=args.dest,
                             per_class=args.per_class, classes=args.classes)
    except TeddyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{done.placed + done.skipped} validation images in {args.classes} class folders under "
          f"{args.dest or args.val}: {done.linked} hard-linked, {done.copied} copied, "
          f"{done.skipped} already in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
