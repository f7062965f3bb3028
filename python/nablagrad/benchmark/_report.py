"""Rows, the run configuration, and the three outputs: the text table, the Markdown section
for benchmarks/RESULTS.md and the PNG bar chart of the ratios."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, List, Optional, Sequence


@dataclasses.dataclass
class Config:
    """What every group's ``run`` gets."""

    threads: int
    quick: bool = False
    smoke: bool = False  # tiny sizes, one round: for the tests, seconds not minutes
    torch: Any = None    # the torch module, or None when absent (or disabled)
    verbose: bool = True

    @property
    def rounds(self) -> int:
        return 1 if self.smoke else 3 if self.quick else 7

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, flush=True)


@dataclasses.dataclass
class Row:
    """One figure: nablagrad's time and a reference library's time for the same work.

    ``ratio`` = reference time / nablagrad time (> 1: nablagrad is faster)."""

    group: str
    case: str
    ours: float                       # seconds
    reference: str = ""               # "PyTorch", "NumPy", or "" when there is none
    ref_time: Optional[float] = None  # seconds
    note: str = ""

    @property
    def ratio(self) -> Optional[float]:
        if self.ref_time is None or self.ours <= 0:
            return None
        return self.ref_time / self.ours


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"


HEADER = ("group", "case", "nablagrad", "reference", "ref time", "ratio", "note")


def _cells(row: Row) -> List[str]:
    return [row.group, row.case, fmt_time(row.ours), row.reference or "-", fmt_time(row.ref_time),
            fmt_ratio(row.ratio), row.note]


def geomean(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def text_table(rows: Sequence[Row]) -> str:
    """The table printed on the terminal (fixed-width columns)."""
    table = [list(HEADER)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    out = []
    for k, line in enumerate(table):
        out.append("  ".join(c.ljust(w) if i < 2 or i >= 6 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def summary_lines(rows: Sequence[Row]) -> List[str]:
    """Geometric mean of the ratios per group and reference."""
    lines = []
    seen = []
    for r in rows:
        key = (r.group, r.reference)
        if r.ratio is not None and key not in seen:
            seen.append(key)
    for group, ref in seen:
        ratios = [r.ratio for r in rows if r.group == group and r.reference == ref and r.ratio is not None]
        g = geomean([x for x in ratios if x is not None])
        if g is not None:
            lines.append(f"{group}: geometric mean {g:.2f}x {ref} over {len(ratios)} figure(s) "
                         f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    return lines


def markdown(rows: Sequence[Row], title: str, date: str, machine: str, command: str) -> str:
    """A section in benchmarks/RESULTS.md's style: date, machine state, command, table."""
    out = [f"## {title}", "", f"Date: {date}. {machine}.", "", f"    {command}", "",
           "Times are medians of alternating rounds in the same process; ratio = reference time / "
           "nablagrad time (> 1: nablagrad is faster).", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |")
    summary = summary_lines(rows)
    if summary:
        out.append("")
        out.extend(f"- {s}" for s in summary)
    return "\n".join(out) + "\n"


def write_markdown(path: str, text: str) -> None:
    """Appends the section to ``path`` (creating it): RESULTS.md keeps one section per run."""
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    with open(path, "a", encoding="utf-8") as f:
        if exists:
            f.write("\n")
        f.write(text)


def write_png(path: str, rows: Sequence[Row], title: str) -> bool:
    """Horizontal bars of the ratios (log scale, a line at 1x); False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [r for r in rows if r.ratio is not None]
    fig_h = 1.2 + 0.32 * max(len(shown), 1)
    fig, ax = plt.subplots(figsize=(10, fig_h), layout="constrained")
    groups = list(dict.fromkeys(r.group for r in shown))
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    labels = [f"{r.group}: {r.case} (vs {r.reference})" for r in shown]
    ratios = [r.ratio for r in shown]
    y = list(range(len(shown)))[::-1]
    ax.barh(y, ratios, color=[colors[r.group] for r in shown])
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    if shown:
        ax.set_xscale("log")
        lo, hi = min(min(ratios), 1.0), max(max(ratios), 1.0)  # type: ignore[type-var]
        ax.set_xlim(lo / 1.5, hi * 1.5)
        for yi, r in zip(y, ratios):
            ax.text(r, yi, f" {r:.2f}x", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no reference library measured (PyTorch absent?)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("reference time / nablagrad time (> 1: nablagrad faster)")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
