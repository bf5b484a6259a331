"""Reorganise a freshly unpacked Tiny-ImageNet's val/ into class folders (once, in place).

    .venv/bin/python tools/reorganise_tiny_imagenet_val.py /data/tiny-imagenet-200
"""
import sys

from teddy.data import reorganise_tiny_imagenet_val

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"moved {reorganise_tiny_imagenet_val(sys.argv[1])} validation images into class folders")
