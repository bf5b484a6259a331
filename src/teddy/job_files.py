"""A job's wildcards and files: wildcard values as integers, the first file of an input list, and
`Files`, the inputs or outputs of a stage run outside Snakemake (tests, benchmarks)."""

from __future__ import annotations


def wildcard_ints(wildcards: dict, *names: str) -> dict:
    return {n: int(wildcards[n]) for n in names}


def first(files):
    """The first file of an input list, or None when it is empty."""
    files = list(files or [])
    return str(files[0]) if files else None


class Files(list):
    """Inputs or outputs outside Snakemake (tests, benchmarks): a list of every file, in order, whose
    named entries are attributes too, like Snakemake's `snakemake.input` (a named entry may be a
    list of files)."""

    def __init__(self, *files, **named):
        flat = [str(f) for f in files]
        for name, value in named.items():
            if isinstance(value, (list, tuple)):
                value = [str(v) for v in value]
                flat += value
            elif value is not None:
                value = str(value)
                flat.append(value)
            setattr(self, name, value)
        super().__init__(flat)
