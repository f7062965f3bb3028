"""python -m nablagrad.benchmark: the whole benchmark suite, one table.

    python -m nablagrad.benchmark                      # everything, all cores (~10 minutes)
    python -m nablagrad.benchmark --quick              # about a minute
    python -m nablagrad.benchmark --only matmul,conv --threads 2
    python -m nablagrad.benchmark --markdown benchmarks/RESULTS.md --png ratios.png

Groups: matmul (vs NumPy/OpenBLAS), overhead, conv, layers and train (vs PyTorch). Every
ratio is reference time / nablagrad time measured in the same process, alternating, median
of rounds (> 1: nablagrad is faster). Without PyTorch the PyTorch columns stay empty
(--no-torch simulates that). --markdown appends a dated section (machine, command, table)
to the file; --png draws the ratios (needs matplotlib). Figures depend on the machine and its
load: the header line prints the CPU, SIMD level, threads and load average.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
import textwrap
import time
from typing import List, Optional, Sequence

import nablagrad as ng

from . import GROUPS
from ._common import NO_TORCH_ENV, machine_line, try_import_torch
from ._report import Config, Row, markdown, summary_lines, text_table, write_markdown, write_png


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m nablagrad.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sizes, cases and rounds: about a minute")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one round (tests; not a measurement)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for nablagrad and PyTorch (default: the machine's, %(default)s)")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ",".join(GROUPS))
    ap.add_argument("--markdown", metavar="FILE", help="append the results as a Markdown section to FILE")
    ap.add_argument("--png", metavar="FILE", help="write a bar chart of the ratios (needs matplotlib)")
    ap.add_argument("--no-torch", action="store_true", help=f"run as if PyTorch were absent (or {NO_TORCH_ENV}=1)")
    args = ap.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in args.groups if g not in GROUPS]
    if bad:
        ap.error(f"unknown group(s) {', '.join(bad)}; choose from {', '.join(GROUPS)}")
    if args.threads < 1:
        ap.error("--threads must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch = None if args.no_torch else try_import_torch()
    cfg = Config(threads=args.threads, quick=args.quick, smoke=args.smoke, torch=torch)
    machine = machine_line(args.threads, torch)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(f"nablagrad {ng.__version__} benchmark ({mode}); {machine}", flush=True)
    start = time.perf_counter()
    rows: List[Row] = []
    for group in args.groups:
        cfg.log(f"[{group}]")
        module = importlib.import_module(f"{__package__}.{group}")
        rows.extend(module.run(cfg))
    elapsed = time.perf_counter() - start
    print()
    print(text_table(rows))
    for line in summary_lines(rows):
        print(line)
    print(f"({elapsed:.0f} s; ratio = reference time / nablagrad time, > 1: nablagrad is faster)")

    command = "python -m nablagrad.benchmark " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                     else sys.argv[1:]))
    title = f"`python -m nablagrad.benchmark` ({mode}, {args.threads} threads)"
    status = 0
    if args.markdown:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        write_markdown(args.markdown, markdown(rows, title, date, machine, command.strip()))
        print(f"appended the Markdown section to {args.markdown}")
    if args.png:
        wrapped = "\n".join(textwrap.wrap(machine, 90))
        if write_png(args.png, rows, f"nablagrad vs reference, {mode} run, {args.threads} threads\n{wrapped}"):
            print(f"wrote the chart {args.png}")
        else:
            print("no PNG: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
