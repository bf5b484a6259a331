"""Teddy: efficient large-scale dataset distillation via Taylor-approximated matching."""

from teddy.errors import TeddyError

__all__ = ["TeddyError"]
__version__ = "0.1.0"
