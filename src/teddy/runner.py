"""What every stage script does around its one call: log to the job's log file, use the threads
and CPUs Snakemake gave the job (the Machine's DataLoader workers fitted beside the threads), and
turn bad input into one clear line instead of a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager

import torch

from teddy.efficiency import gpu_memory_line
from teddy.errors import TeddyError
from teddy.machine import job_machine
from teddy.plugins import load_plugins


@contextmanager
def stage(snakemake):
    """Yields the job's Machine (snakemake.params.machine with its workers fitted to the job's
    cpus_per_task beside its threads), or None for a rule without one."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    terminal = sys.stderr
    log = open(log_path, "w", buffering=1) if log_path else None
    if log is not None:
        sys.stdout = sys.stderr = log
    cpus = getattr(getattr(snakemake, "resources", None), "cpus_per_task", None)
    threads = max(1, int(snakemake.threads))
    if isinstance(cpus, int) and cpus > 0:
        threads = min(threads, cpus)  # a cpus_per_task set below the threads wins: use what was granted
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    machine = getattr(getattr(snakemake, "params", None), "machine", None)
    try:
        load_plugins((getattr(snakemake, "config", None) or {}).get("plugins"))  # what the config's files register
        yield job_machine(machine, threads, cpus if isinstance(cpus, int) else None) if machine is not None else None
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
