"""Published figures as data: every *.csv under config/published/ (or one file), one schema.

Columns: dataset, method, ipc (empty: the whole training set), student (a name of our model
registry where one fits), labels (soft|hard: the labels the student was trained with), protocol
(the evaluation protocol the figure was measured under: a name of config/protocols/*.yaml, a peer
protocol we name only (config/protocols/named/), or `unstated` when the source does not state its
evaluation settings or we have not checked them), norm (the student's normalisation layers; empty
when the source does not say), top1 and std (%, std empty when the source gives none), source.
Lines starting with '#' are comments. A bad field stops with the file and line.

A published figure is shown only beside our rows of the same protocol and student
(teddy.report.paper_table); the protocol column is what makes that match possible.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from teddy.errors import TeddyError
from teddy.protocols import PROTOCOLS_DIR, known_protocols, named_protocols

COLUMNS = ["dataset", "method", "ipc", "student", "labels", "protocol", "norm", "top1", "std", "source"]
LABELS = ("soft", "hard")
NORMS = ("batch", "instance", "layer", "group", "none")

UNSTATED = "unstated"
def row_protocols(protocol_dir=None) -> tuple[str, ...]:
    """The protocol names a published row may carry (besides `unstated`): the protocol files of
    `protocol_dir` (default the repository's config/protocols/) plus the peers' protocols we name
    but ship no recipe for (its named/ folder: teddy.protocols.named_protocols)."""
    folder = protocol_dir or PROTOCOLS_DIR
    stems = known_protocols(folder)
    return tuple(stems) + tuple(p for p in named_protocols(folder) if p not in stems)


def published_files(path) -> list[Path]:
    """The CSV files a `published_results` setting names: a file, or every *.csv of a folder."""
    path = Path(path)
    if path.is_dir():
        return sorted(path.glob("*.csv"))
    if path.is_file():
        return [path]
    raise TeddyError(f"published results not found: {path} (config key published_results)")


def _number(text: str, where: str, field: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also rejects NaN
        raise TeddyError(f"{where}: field '{field}' is '{text}', expected a number in [{low:g}, {high:g}]")
    return value


def _parse_row(fields: dict, where: str, protocols) -> dict:
    row = {k: (fields.get(k) or "").strip() for k in COLUMNS}
    for key in ("dataset", "method", "student", "source"):
        if not row[key]:
            raise TeddyError(f"{where}: field '{key}' is empty")
    if row["labels"] not in LABELS:
        raise TeddyError(f"{where}: field 'labels' is '{row['labels']}', expected one of {list(LABELS)}")
    if row["protocol"] != UNSTATED and row["protocol"] not in protocols:
        raise TeddyError(f"{where}: field 'protocol' is '{row['protocol']}', expected one of "
                         f"{sorted(protocols)} or '{UNSTATED}'")
    if row["norm"] and row["norm"] not in NORMS:
        raise TeddyError(f"{where}: field 'norm' is '{row['norm']}', expected one of {list(NORMS)} "
                         f"(empty: not stated by the source)")
    row["norm"] = row["norm"] or pd.NA
    if row["ipc"]:
        if not row["ipc"].isdigit() or int(row["ipc"]) < 1:
            raise TeddyError(f"{where}: field 'ipc' is '{row['ipc']}', expected an integer >= 1 "
                             f"(empty for the whole training set)")
        row["ipc"] = int(row["ipc"])
    else:
        row["ipc"] = pd.NA
    row["top1"] = _number(row["top1"], where, "top1", 0, 100)
    row["std"] = _number(row["std"], where, "std", 0, 100) if row["std"] else float("nan")
    return row


def read_published_file(path, protocols=None) -> list[dict]:
    """The rows of one file; `protocols`: the known protocol names (default row_protocols())."""
    protocols = row_protocols() if protocols is None else tuple(protocols)
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TeddyError(f"unreadable published results file {path}: {exc}") from None
    header, rows = None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line]))
        where = f"{path} line {number}"
        if header is None:
            header = [f.strip() for f in fields]
            if header != COLUMNS:
                raise TeddyError(f"{where}: header is {header}, expected {COLUMNS}")
            continue
        if len(fields) != len(COLUMNS):
            raise TeddyError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
        rows.append(_parse_row(dict(zip(COLUMNS, fields)), where, protocols))
    return rows


def load_published(path, dataset: str | None = None, protocols=None) -> pd.DataFrame:
    """Every published row (of `dataset` when given), as a DataFrame with the COLUMNS; `ipc` is
    a nullable integer (NA: whole training set). `protocols`: the known protocol names (e.g.
    row_protocols(config/protocols)); default row_protocols(). A row whose protocol is neither
    known nor `unstated` stops with its file and line."""
    rows = [row for p in published_files(path) for row in read_published_file(p, protocols)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["ipc"] = table["ipc"].astype("Int64")
    if dataset is not None:
        table = table[table["dataset"] == dataset].reset_index(drop=True)
    return table
