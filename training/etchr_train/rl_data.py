"""The RL set: the rows of a corpus where the ground-truth edit makes the difference (Eq. 1).

``POST /filter`` asks U to answer each question from the image alone and with its ground-truth edit; a row
is kept when U fails alone and succeeds with the edit. Those are the questions on which a better edit can
still earn reward, so RL spends its samples there. Each clause is decided by a majority of k sampled
decodings (or one greedy decoding), and the summary says how many rows each clause dropped, per family, so
a curator sees whether a family is too easy for U (clause 1) or its edits do not help (clause 2).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from etchr.clients.reward import RewardClient
from etchr.manifest import MANIFEST_NAME, ManifestRow, read_manifest, reroot, write_manifest
from etchr.protocol.reward import FilterResult
from etchr.tasks import TASK_IDS
from etchr_train.examples import manifest_path

CHUNK_ROWS = 256  # rows whose images are held in memory (base64) at once
SUMMARY_NAME = "filter_summary.json"
RESULTS_NAME = "filter_results.jsonl"
DEFAULT_K = 4


class ClauseCounts(BaseModel):
    """Rows of one family (or all) and what Eq. 1 did with them; a row failing both clauses counts in both."""

    rows: int = 0
    kept: int = 0
    dropped_right_alone: int = Field(
        default=0, description="clause 1 failed: U was right alone in at least half of the decodings"
    )
    dropped_wrong_with_edit: int = Field(
        default=0, description="clause 2 failed: U was right with the true edit in at most half of them"
    )
    dropped_both: int = Field(default=0, description="rows that failed both clauses")

    def add(self, result: FilterResult) -> None:
        self.rows += 1
        self.kept += result.keep
        self.dropped_right_alone += not result.fails_alone
        self.dropped_wrong_with_edit += not result.succeeds_with_edit
        self.dropped_both += not (result.fails_alone or result.succeeds_with_edit)


class RowVerdict(FilterResult):
    """One line of ``OUT/filter_results.jsonl``: the service's verdicts on a row, with its family."""

    task: str


class FilterReport(BaseModel):
    """What ``OUT/filter_summary.json`` holds: how the filter ran and what each clause dropped."""

    source: str
    manifest: str
    results: str = Field(description="per-row fractions and clause outcomes, JSON lines")
    k: int = Field(description="decodings per clause")
    greedy: bool = Field(description="one greedy decoding (temperature 0) per clause instead of k samples")
    total: ClauseCounts
    per_family: dict[str, ClauseCounts]


@dataclass(frozen=True)
class FilterSummary:
    manifest: Path
    seen: int
    kept: int
    report: FilterReport
    report_path: Path


def filter_manifest(
    data: Path,
    out: Path,
    client: RewardClient,
    *,
    k: int | None = None,
    greedy: bool = False,
    progress: bool | None = None,
) -> FilterSummary:
    """Write ``out/manifest.jsonl`` with the rows ``/filter`` keeps (image paths re-rooted at ``out``),
    ``out/filter_results.jsonl`` with every row's verdicts and ``out/filter_summary.json``.

    Each clause is decided by a majority of ``k`` sampled decodings (default 4), or with ``greedy`` by one
    decoding at temperature 0 (``k`` then left out or 1). ``progress``: None shows a bar on a terminal.
    """
    if k is None:
        k = 1 if greedy else DEFAULT_K
    if greedy and k != 1:
        raise ValueError(f"greedy decides each clause on one decoding: k must be 1, not {k}")
    source = manifest_path(data)
    root = source.parent
    out.mkdir(parents=True, exist_ok=True)
    target = out / MANIFEST_NAME
    if target.resolve() == source.resolve():
        raise ValueError(f"--out {out} would overwrite the manifest being filtered")
    rows = list(read_manifest(source))
    for row in rows:
        if row.edited_image is None:
            raise ValueError(f"{source}: row {row.id!r} has no edited_image (Eq. 1 needs the true edit)")
    kept: list[ManifestRow] = []
    results_path = out / RESULTS_NAME
    total = ClauseCounts()
    per_family: dict[str, ClauseCounts] = {}
    bar = tqdm(
        total=len(rows), desc="Eq. 1", unit=" rows", disable=None if progress is None else not progress
    )
    with bar, results_path.open("w") as results_file:
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            items = [_filter_item(row, root) for row in chunk]
            outcome = client.filter(items, k=k, greedy=greedy)
            for row, result in zip(chunk, outcome.items, strict=True):
                total.add(result)
                per_family.setdefault(row.task, ClauseCounts()).add(result)
                verdict = RowVerdict(task=row.task, **result.model_dump())
                results_file.write(verdict.model_dump_json() + "\n")
                if result.keep:
                    kept.append(reroot(row, root, out))
            bar.update(len(chunk))
    write_manifest(target, kept)
    report = FilterReport(
        source=str(source),
        manifest=str(target),
        results=str(results_path),
        k=k,
        greedy=greedy,
        total=total,
        per_family=per_family,
    )
    report_path = out / SUMMARY_NAME
    report_path.write_text(report.model_dump_json(indent=2) + "\n")
    return FilterSummary(
        manifest=target, seen=len(rows), kept=len(kept), report=report, report_path=report_path
    )


def clause_table(report: FilterReport) -> str:
    """The per-family table ``etchr train filter`` prints: rows, kept, and what each clause dropped."""
    header = ["family", "rows", "kept", "dropped: right alone", "dropped: wrong with edit", "both"]
    order = {task: index for index, task in enumerate(TASK_IDS)}
    families = sorted(report.per_family.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    entries = [*families, ("all", report.total)]
    table = [header] + [
        [
            family,
            *map(
                str,
                (
                    counts.rows,
                    counts.kept,
                    counts.dropped_right_alone,
                    counts.dropped_wrong_with_edit,
                    counts.dropped_both,
                ),
            ),
        ]
        for family, counts in entries
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    aligned = (
        [line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))]
        for line in table
    )
    return "\n".join("  ".join(cells) for cells in aligned)


def _filter_item(row: ManifestRow, root: Path) -> dict[str, object]:
    assert row.edited_image is not None
    return {
        "id": row.id,
        "image": _b64(root / row.image),
        "question": row.question,
        "answer": row.answer,
        "edited_image": _b64(root / row.edited_image),
        "task": row.task,
        "scorer": row.scorer,
        "meta": row.meta,
    }


def _b64(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"no such image {path}")
    return base64.b64encode(path.read_bytes()).decode()
