"""Accuracy vs IPC, one panel per student, from the long table of teddy.report.paper_table: our
methods as lines with seed error bars, the ceiling and published figures (same evaluation protocol
and student) as reference lines; published figures of other protocols are never drawn. Matplotlib's
Agg backend: no display needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from teddy.errors import TeddyError  # noqa: E402
from teddy.io import atomic_path  # noqa: E402


def accuracy_vs_ipc(table: pd.DataFrame, protocol: str, out_png, dataset: str = "") -> None:
    """Write the plot of evaluation protocol `protocol`; a protocol absent from `table` is named."""
    in_blocks = table[table["kind"] != "unmatched"]
    rows = in_blocks[in_blocks["protocol"] == protocol]
    if rows.empty:
        ran = sorted(in_blocks["protocol"].unique())
        raise TeddyError(f"no results with protocol '{protocol}' to plot; protocols evaluated: {ran}")
    students = sorted(rows["student"].unique())
    fig, axes = plt.subplots(1, len(students), figsize=(4.8 * len(students), 3.8), squeeze=False)
    for ax, student in zip(axes[0], students):
        block = rows[rows["student"] == student]
        ipcs = sorted(int(i) for i in block["ipc"].unique())
        for method, line in block[block["kind"] == "measured"].groupby("method", sort=True):
            line = line.sort_values("ipc")
            ax.errorbar(line["ipc"].astype(int), line["mean"], yerr=line["std"], marker="o", capsize=3, label=method)
        ceiling = block[block["kind"] == "ceiling"]
        if not ceiling.empty:
            ax.axhline(ceiling["mean"].iloc[0], color="black", linestyle="--", linewidth=1,
                       label=f"ceiling {ceiling['mean'].iloc[0]:.1f}")
        for (method, norm), line in block[block["kind"] == "published"].groupby(["method", "norm"], sort=True,
                                                                                dropna=False):
            line = line.sort_values("ipc")
            if line["whole_train_set"].all():  # no IPC: one figure for the whole training set
                ax.axhline(line["mean"].iloc[0], color="grey", linestyle=":", linewidth=1,
                           label=f"{method} (published)")
            else:
                named = f"{method} (published, {norm} norm)" if isinstance(norm, str) else f"{method} (published)"
                ax.plot(line["ipc"].astype(int), line["mean"], linestyle=":", marker="x", alpha=0.7, label=named)
        ax.set_xscale("log")
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{student}, protocol {protocol}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if dataset:
        fig.suptitle(dataset)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
