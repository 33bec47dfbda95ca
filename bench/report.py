"""The plot and the markdown table of a result CSV, rebuilt from the file alone (``python -m bench --report CSV``).

Works on any CSV with the protocol's columns, also one cut short by a killed run. Where a row's
``ratio_vs_cudnn`` is empty and the file holds a measured cudnn row of the same benchmark, shape, dtype and
mode, the table and plot use ``ms_p50 / cudnn's ms_p50``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.results import KEY_COLUMNS, STATUSES, read_rows


def fill_ratios(rows: Sequence[dict]) -> list[dict]:
    """Copies of ``rows`` with empty ratios filled in from a measured cudnn row of the same key."""
    base = {}
    for r in rows:
        if r["provider"] == "cudnn" and r["status"] == "ok" and r["ms_p50"]:
            base.setdefault(tuple(r[c] for c in KEY_COLUMNS[:-1]), r["ms_p50"])
    out = []
    for r in rows:
        r = dict(r)
        b = base.get(tuple(r[c] for c in KEY_COLUMNS[:-1]))
        if r["ratio_vs_cudnn"] is None and r["ms_p50"] is not None and b:
            r["ratio_vs_cudnn"] = r["ms_p50"] / b
        out.append(r)
    return out


def label(row: dict) -> str:
    s = f"{row['bench']} {row['cell']} B{row['B']} T{row['T']} H{row['H']}"
    if row["I"] != row["H"]:
        s += f" I{row['I']}"
    return s + f" {row['dtype']} {row['mode']}"


def counts(rows: Sequence[dict]) -> str:
    """``12 rows: 9 ok, 3 skipped`` (statuses in a fixed order)."""
    c = Counter(r["status"] for r in rows)
    parts = [f"{c[s]} {s}" for s in STATUSES if c[s]]
    return f"{len(rows)} rows" + (": " + ", ".join(parts) if parts else "")


def _environments(rows: Sequence[dict]) -> list[str]:
    envs = dict.fromkeys((r["device"], r["torch"], r["triton"], r["cuda"], r["fastrnn_commit"]) for r in rows)
    return [f"device {d}, torch {t}, triton {tr}, cuda {cu or '-'}, fastrnn {commit}"
            for d, t, tr, cu, commit in envs]


_TABLE = (("bench", "{}"), ("cell", "{}"), ("B", "{}"), ("T", "{}"), ("H", "{}"), ("I", "{}"), ("layers", "{}"),
          ("bidir", "{}"), ("dtype", "{}"), ("mode", "{}"), ("provider", "{}"), ("ms_p50", "{:.3f}"),
          ("ratio_vs_cudnn", "{:.2f}"), ("tflops", "{:.2f}"), ("us_per_step", "{:.1f}"), ("peak_mb", "{:.1f}"),
          ("status", "{}"), ("note", "{}"))
NOTE_WIDTH = 100


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (notes cut to NOTE_WIDTH characters; the CSV has them whole)."""
    head = [name for name, _ in _TABLE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for name, fmt in _TABLE:
            value = r.get(name)
            text = "" if value is None or value == "" else fmt.format(value)
            if name == "note" and len(text) > NOTE_WIDTH:
                text = text[:NOTE_WIDTH - 3] + "..."
            cells.append(text.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: Sequence[dict], source: str = "") -> str:
    """The markdown report: where the rows come from, their environment, the status counts, the table."""
    out = [f"# fastrnn benchmark results{f' ({source})' if source else ''}", ""]
    out += [f"- {e}" for e in _environments(rows)]
    dates = sorted(r["date"] for r in rows if r["date"])
    if dates:
        out.append(f"- dates {dates[0]} to {dates[-1]}")
    out += [f"- {counts(rows)}", "", markdown_table(rows), ""]
    return "\n".join(out)


def brief(rows: Sequence[dict]) -> list[str]:
    """One line per (benchmark, shape, dtype, mode), providers in row order: ``cudnn 2.010 ms, fastrnn:tiled
    5.120 ms (x2.55), fastrnn:persistent WRONG``; the short form a session summary prints."""
    groups: dict[str, list[str]] = {}
    for r in fill_ratios(rows):
        if r["status"] == "ok":
            what = f"{r['ms_p50']:.3f} ms" + (f" (x{r['ratio_vs_cudnn']:.2f})" if r["ratio_vs_cudnn"] is not None
                                               and r["provider"] != "cudnn" else "")
        else:
            what = r["status"].upper()
        groups.setdefault(label(r), []).append(f"{r['provider']} {what}")
    return [f"{key}: {', '.join(items)}" for key, items in groups.items()]


def plot(rows: Sequence[dict], path: Path) -> None:
    """Ratio vs cuDNN per benchmark and provider (log scale, line at 1); ms_p50 when no row has a ratio. Only
    measured rows (status ok) are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["status"] == "ok" and r["ms_p50"] is not None]
    use_ratio = any(r["ratio_vs_cudnn"] is not None for r in measured)
    key = "ratio_vs_cudnn" if use_ratio else "ms_p50"
    points = [r for r in measured if r[key] is not None and not (use_ratio and r["provider"] == "cudnn")]
    labels = list(dict.fromkeys(label(r) for r in points))
    providers = list(dict.fromkeys(r["provider"] for r in points))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels) + 2), 5.5))
    markers = "o^sDv<>pP*X"
    for i, prov in enumerate(providers):
        xs = [labels.index(label(r)) for r in points if r["provider"] == prov]
        ys = [r[key] for r in points if r["provider"] == prov]
        ax.scatter(xs, ys, label=prov, marker=markers[i % len(markers)], s=28)
    if points:
        ax.set_yscale("log")
    if use_ratio:
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_ylabel("time / cuDNN time (ms_p50 ratio; < 1 is faster)")
    else:
        ax.set_ylabel("ms_p50 (no cudnn row to compare with)")
    if not points:
        ax.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    envs = _environments(rows)
    head = envs[0].replace(", torch", "\ntorch", 1) if envs else "no rows"  # device on a line of its own
    more = f" (+{len(envs) - 1} more environments)" if len(envs) > 1 else ""
    dates = sorted(r["date"] for r in rows if r["date"])
    ax.set_title(f"fastrnn bench: {head}{more}\n{dates[0] if dates else ''}  ({counts(rows)})", fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    if providers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(csv_path: Path, png: bool = True) -> tuple[str, list[Path]]:
    """Rebuild ``<stem>.png`` and ``<stem>.md`` beside ``csv_path``. Returns (markdown, written paths)."""
    csv_path = Path(csv_path)
    rows = fill_ratios(read_rows(csv_path))
    text = markdown(rows, csv_path.name)
    md = csv_path.with_suffix(".md")
    md.write_text(text)
    written = [md]
    if png:
        plot(rows, csv_path.with_suffix(".png"))
        written.append(csv_path.with_suffix(".png"))
    return text, written
