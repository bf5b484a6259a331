"""Does a method beat the baselines, and by how many standard deviations? From the evaluation
results a run has written so far (a run in sittings may be partial: the cells not yet measured are
counted, never guessed), per (student, protocol, IPC): every method's mean ± std over its student
seeds, then `--method` against each of `--against`, the difference of means and that difference
over sqrt(std_method^2 + std_baseline^2).

    .venv/bin/python benchmarks/method_gaps.py --configfile config/fashion_mnist_paper.yaml \
        [--method teddy] [--against random herding] [--protocol dc] [--out F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cell_table_head, load_config_file, print_page, table_head

from teddy.jobs import eval_result_path
from teddy.report import accuracy_table, collect_results, mean_std_text, method_gaps, requested_cells
from teddy.stages import aggregate


def cell_path(results: Path, r) -> Path:
    return Path(eval_result_path(results, r.method, r.ipc, r.arch, r.protocol, r.seed))


def page(cfg: dict, method: str, against: list[str], protocols: list[str] | None) -> str:
    results = Path(cfg["results_dir"])
    requested = requested_cells(aggregate.settings(cfg, {}))  # the cells the run's tables hold
    if protocols:
        requested = requested[requested["protocol"].isin(protocols)]
    present = [cell_path(results, r) for r in requested.itertuples(index=False) if cell_path(results, r).is_file()]
    lines = [f"Results dir `{results}`: {len(present)} of the {len(requested)} requested student runs"
             f"{' under ' + ', '.join(protocols) if protocols else ''} are measured.", ""]
    if not present:
        return "\n".join(lines)
    table = accuracy_table(collect_results(present))
    for (arch, protocol), block in table.groupby(["arch", "protocol"], sort=False):
        ipcs = sorted(block["ipc"].unique())
        lines += cell_table_head(arch, protocol, ["method", *(f"IPC {i}" for i in ipcs)])
        for name, rows in block.groupby("method", sort=False):
            cells = []
            for ipc in ipcs:
                hit = rows[rows["ipc"] == ipc]
                if hit.empty:
                    cells.append("–")
                    continue
                r = hit.iloc[0]
                cells.append(f"{mean_std_text(r['mean'], r['std'])} (n={int(r['seeds'])})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    gaps = method_gaps(table, method, against)
    lines += [f"### {method} against {', '.join(against)}", "",
              *table_head(["student", "protocol", "IPC", "baseline", "difference (points)", "in σ of the difference"])]
    for g in gaps.itertuples(index=False):
        sigmas = "–" if g.sigmas != g.sigmas else f"{g.sigmas:+.2f}"
        lines.append(f"| {g.arch} | {g.protocol} | {g.ipc} | {g.baseline} | {g.diff:+.2f} | {sigmas} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--method", default="teddy")
    parser.add_argument("--against", nargs="+", default=["random", "herding"])
    parser.add_argument("--protocol", nargs="*", default=None, help="only these protocols")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    print_page(page(load_config_file(args.configfile), args.method, args.against, args.protocol), args.out)


if __name__ == "__main__":
    main()
