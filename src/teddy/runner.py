"""What every stage script does around its one call: log to the job's log file, use the threads
Snakemake gave the job, and turn bad input into one clear line instead of a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager

import torch

from teddy.efficiency import gpu_memory_line
from teddy.errors import TeddyError


@contextmanager
def stage(snakemake):
    log_path = snakemake.log[0] if len(snakemake.log) else None
    terminal = sys.stderr
    log = open(log_path, "w", buffering=1) if log_path else None
    if log is not None:
        sys.stdout = sys.stderr = log
    threads = max(1, int(snakemake.threads))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        yield
        if gpu_memory_line():  # the job's own record of its peak GPU memory (efficiency table)
            print(gpu_memory_line(), file=sys.stderr)
    except TeddyError as exc:
        message = f"error in rule {snakemake.rule}: {exc}"
        print(message, file=sys.stderr)
        if log is not None:
            print(message, file=terminal)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        if log is not None:
            sys.stdout, sys.stderr = sys.__stdout__, terminal
            log.close()
