"""Turn results.jsonl into the paper-style table: summary.json, summary.md and charts."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from etchr_tools.eval.harness import MODES, RowResult

OVERALL = "overall"


def summarize(results: Sequence[RowResult]) -> dict[str, list[dict[str, object]]]:
    """``{"rows": [{"mode", "task", "n", "correct", "pass_at_1"}]}``: per mode × task, plus ``overall``.

    ``overall`` averages over rows (micro), like the per-task figures; evr rows also carry how often the edit
    was used (``edit_used``). Imported benchmarks add ``by_source``: the same figures per benchmark and
    category (``meta.source``), the way each benchmark's paper reports them.
    """
    summary = {"rows": _pass_rows(results, "task", lambda r: r.task)}
    by_source = _pass_rows(results, "group", source_group, overall=False)
    if by_source:
        summary["by_source"] = by_source
    return summary


def source_group(result: RowResult) -> str | None:
    """ "benchmark · category" of an imported row (``None`` for generated rows)."""
    if not result.source or not result.source.get("benchmark"):
        return None
    category = result.source.get("category")
    return f"{result.source['benchmark']} · {category}" if category else str(result.source["benchmark"])


def _pass_rows(
    results: Sequence[RowResult], field: str, key: Callable[[RowResult], str | None], *, overall: bool = True
) -> list[dict[str, object]]:
    groups: dict[tuple[str, str], list[RowResult]] = defaultdict(list)
    for result in results:
        name = key(result)
        if name is not None:
            groups[(result.mode, name)].append(result)
            if overall:
                groups[(result.mode, OVERALL)].append(result)
    rows: list[dict[str, object]] = []
    for (mode, name), members in sorted(
        groups.items(), key=lambda kv: (_mode_order(kv[0][0]), kv[0][1] == OVERALL, kv[0][1])
    ):
        correct = sum(r.correct for r in members)
        row: dict[str, object] = {
            "mode": mode,
            field: name,
            "n": len(members),
            "correct": correct,
            "pass_at_1": round(100 * correct / len(members), 2),
        }
        if mode != "direct":
            row["edit_used"] = round(100 * sum(r.used_edit for r in members) / len(members), 2)
        rows.append(row)
    return rows


def _mode_order(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def _axes(rows: list[dict[str, object]], field: str = "task") -> tuple[list[str], list[str]]:
    """(modes in direct, edit, evr order; groups sorted, with ``overall`` last where there is one)."""
    modes = sorted({str(r["mode"]) for r in rows}, key=_mode_order)
    names = sorted({str(r[field]) for r in rows if r[field] != OVERALL})
    return modes, [*names, OVERALL] if any(r[field] == OVERALL for r in rows) else names


def markdown_table(
    summary: dict[str, list[dict[str, object]]], part: str = "rows", field: str = "task"
) -> str:
    """Pass@1 per task (rows) and mode (columns), with Δ vs direct where direct was run.

    ``part="by_source", field="group"`` gives the same table per benchmark and category.
    """
    rows = summary[part]
    cells = {(r["mode"], r[field]): r for r in rows}
    modes, tasks = _axes(rows, field)
    header = [field, "n", *(f"{mode} Pass@1" for mode in modes)]
    if "direct" in modes:
        header += [f"Δ {mode}" for mode in modes if mode != "direct"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        present = [cells.get((mode, task)) for mode in modes]
        n = max((int(c["n"]) for c in present if c), default=0)
        values = [f"{c['pass_at_1']:.2f}" if c else "–" for c in present]
        deltas = []
        direct = cells.get(("direct", task))
        if "direct" in modes:
            for mode in modes:
                if mode == "direct":
                    continue
                other = cells.get((mode, task))
                deltas.append(f"{_rate(other) - _rate(direct):+.2f}" if other and direct else "–")
        name = f"**{task}**" if task == OVERALL else task
        lines.append("| " + " | ".join([name, str(n), *values, *deltas]) + " |")
    return "\n".join(lines) + "\n"


def _rate(cell: dict[str, object]) -> float:
    """Pass@1 in % from the counts: a Δ of two rounded rates could be off by 0.01."""
    return 100 * int(cell["correct"]) / int(cell["n"])  # type: ignore[call-overload]


def by_path_length(results: Sequence[RowResult]) -> dict[int, dict[str, float]]:
    """For rows with a route length: evr edit acceptance and accuracy per mode, per length (Fig. 2(b))."""
    groups: dict[int, list[RowResult]] = defaultdict(list)
    for result in results:
        if result.path_length is not None:
            groups[result.path_length].append(result)
    table: dict[int, dict[str, float]] = {}
    for length, members in sorted(groups.items()):
        row: dict[str, float] = {}
        evr = [r for r in members if r.mode == "evr"]
        if evr:
            row["edit_accepted"] = (
                100 * sum(bool(r.verification and r.verification.get("reliable")) for r in evr) / len(evr)
            )
        for mode in sorted({r.mode for r in members}, key=_mode_order):
            picked = [r for r in members if r.mode == mode]
            row[f"{mode}_pass_at_1"] = 100 * sum(r.correct for r in picked) / len(picked)
        table[length] = row
    return table


def write_report(results: Sequence[RowResult], out: Path) -> dict[str, Path]:
    """summary.json, summary.md, pass_at_1.png and (when routes have lengths) path_length.png."""
    summary = summarize(results)
    written = {"json": out / "summary.json", "md": out / "summary.md", "chart": out / "pass_at_1.png"}
    written["json"].write_text(json.dumps(summary, indent=2) + "\n")
    lengths = by_path_length(results)
    md = "# Pass@1\n\n" + markdown_table(summary)
    if "by_source" in summary:
        md += "\n## By benchmark and category (imported rows)\n\n"
        md += markdown_table(summary, "by_source", "group")
    if lengths:
        md += (
            "\n## By route length (logic rows)\n\n| length | "
            + " | ".join(next(iter(lengths.values())))
            + " |\n"
        )
        md += "|---|" + "---|" * len(next(iter(lengths.values()))) + "\n"
        for length, row in lengths.items():
            md += f"| {length} | " + " | ".join(f"{value:.1f}" for value in row.values()) + " |\n"
    written["md"].write_text(md)
    _bar_chart(summary, written["chart"])
    if lengths:
        written["path_chart"] = out / "path_length.png"
        _length_chart(lengths, written["path_chart"])
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(summary: dict[str, list[dict[str, object]]], path: Path) -> None:
    plt = _pyplot()
    modes, tasks = _axes(summary["rows"])
    cells = {(r["mode"], r["task"]): float(r["pass_at_1"]) for r in summary["rows"]}  # type: ignore[arg-type]
    width = 0.8 / max(1, len(modes))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 3.6))
    for i, mode in enumerate(modes):
        xs = [t + i * width for t in range(len(tasks))]
        ax.bar(xs, [cells.get((mode, task), 0.0) for task in tasks], width, label=mode)
    ax.set_xticks([t + width * (len(modes) - 1) / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("Pass@1 (%)")
    _save(plt, fig, ax, path)


def _length_chart(lengths: dict[int, dict[str, float]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = list(lengths)
    for key in sorted({k for row in lengths.values() for k in row}):
        ax.plot(xs, [lengths[x].get(key, float("nan")) for x in xs], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("shortest route length (steps)")
    ax.set_ylabel("%")
    _save(plt, fig, ax, path)


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> None:
    """Both charts are percentages with a legend, saved alike."""
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
