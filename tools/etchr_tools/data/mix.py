"""The RL set: a stratified draw of N rows per task family from one or more manifests (``etchr data mix``).

The paper samples 2,000 instances per family (10,000 in all) for Stage II and then keeps those that pass
Eq. 1 (``etchr train filter``). Rows keep their images where they lie: the mixed manifest points at them
relative to its own folder, so nothing is copied. Only rows with a ground-truth edit (``edited_image``) are
drawn by default, since Eq. 1 needs it. The draw is seeded: the same inputs and seed give the same set.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from etchr.manifest import MANIFEST_NAME, ManifestRow, read_manifest, reroot, write_manifest
from etchr.tasks import TASK_IDS

PAPER_PER_FAMILY = 2000
SUMMARY_NAME = "mix_summary.json"


@dataclass
class FamilyDraw:
    """One family's numbers: rows offered by the inputs, rows skipped (no edit), rows drawn."""

    available: int = 0
    skipped_no_edit: int = 0
    drawn: int = 0
    by_manifest: dict[str, int] = field(default_factory=dict)


@dataclass
class MixReport:
    per_family: int
    seed: int
    manifest: Path
    families: dict[str, FamilyDraw]

    @property
    def drawn(self) -> int:
        return sum(family.drawn for family in self.families.values())

    def short(self) -> list[str]:
        """Families that had fewer usable rows than ``per_family``."""
        return [name for name, family in self.families.items() if family.drawn < self.per_family]


def _manifest_path(path: Path) -> Path:
    return path / MANIFEST_NAME if path.is_dir() else path


def mix_manifests(
    manifests: Sequence[Path],
    out: Path,
    *,
    per_family: int = PAPER_PER_FAMILY,
    seed: int = 0,
    families: Sequence[str] | None = None,
    require_edit: bool = True,
    progress: bool | None = None,
) -> MixReport:
    """Draw up to ``per_family`` rows of each family from ``manifests`` into ``out/manifest.jsonl``.

    ``families`` restricts the draw (default: every family the inputs hold, in the project's order). A family
    with fewer usable rows gives all it has and is listed by :meth:`MixReport.short`. Row ids that collide
    across inputs get a ``@<k>`` suffix (k = the input's position), so every id in the set is unique.
    ``progress``: None shows a bar when stderr is a terminal. Writes ``out/mix_summary.json`` too.
    """
    if per_family < 1:
        raise ValueError(f"--per-family must be at least 1, got {per_family}")
    if not manifests:
        raise ValueError("name at least one manifest to mix")
    unknown = sorted(set(families or ()) - set(TASK_IDS))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(TASK_IDS)}")
    paths = [_manifest_path(Path(path)) for path in manifests]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: not found; expected a manifest.jsonl or the folder holding one")

    pools: dict[str, list[tuple[int, ManifestRow]]] = defaultdict(list)
    draws: dict[str, FamilyDraw] = defaultdict(FamilyDraw)
    seen_ids: Counter[str] = Counter()
    for k, path in enumerate(paths):
        rows = tqdm(
            read_manifest(path),
            desc=f"reading {path}",
            unit=" rows",
            disable=None if progress is None else not progress,
        )
        for row in rows:
            if families and row.task not in families:
                continue
            family = draws[row.task]
            family.available += 1
            if require_edit and not row.edited_image:
                family.skipped_no_edit += 1
                continue
            seen_ids[row.id] += 1
            pools[row.task].append((k, row))

    wanted = [task for task in TASK_IDS if task in (families or draws)]
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    chosen: list[ManifestRow] = []
    for task in wanted:
        pool = pools.get(task, [])
        picked = rng.sample(pool, min(per_family, len(pool)))
        family = draws[task]
        family.drawn = len(picked)
        for k, row in picked:
            name = str(paths[k])
            family.by_manifest[name] = family.by_manifest.get(name, 0) + 1
            row_id = row.id if seen_ids[row.id] == 1 else f"{row.id}@{k}"
            chosen.append(reroot(row, paths[k].parent, out).model_copy(update={"id": row_id}))
    rng.shuffle(chosen)  # families interleaved, so any prefix of the set is itself mixed
    manifest = out / MANIFEST_NAME
    write_manifest(manifest, chosen)
    report = MixReport(
        per_family=per_family, seed=seed, manifest=manifest, families={t: draws[t] for t in wanted}
    )
    summary = {
        "per_family": per_family,
        "seed": seed,
        "require_edit": require_edit,
        "inputs": [str(path) for path in paths],
        "drawn": report.drawn,
        "families": {name: vars(family) for name, family in report.families.items()},
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return report


def mix_table(report: MixReport) -> str:
    """Per family: rows the inputs offered, skipped for want of an edit, drawn, and a note when short."""
    lines = [f"{'family':<12}{'available':>10}{'no edit':>9}{'drawn':>8}"]
    for name, family in report.families.items():
        note = f"  short of {report.per_family}" if family.drawn < report.per_family else ""
        lines.append(f"{name:<12}{family.available:>10}{family.skipped_no_edit:>9}{family.drawn:>8}{note}")
    total = report.families.values()
    lines.append(
        f"{'all':<12}{sum(f.available for f in total):>10}{sum(f.skipped_no_edit for f in total):>9}"
        f"{report.drawn:>8}"
    )
    return "\n".join(lines)
