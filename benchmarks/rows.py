"""Benchmark rows: one schema, one file per scene (``benchmarks/results/<scene>.jsonl``).

A row is one JSON object per line. Every row names what was run and where (:data:`REQUIRED`); the
measurements beside them depend on its ``kind`` (:data:`KINDS`). Writers go through :func:`append_row`,
which refuses a row without them, and readers pick rows of one kind with :func:`latest_by_label`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REQUIRED = ("kind", "label", "method", "scene", "command", "gpu", "date", "code_commit")
"""Fields every row holds, as strings."""
KINDS = {
    "suite": "scene_suite.py: the development scenes x the four suite configurations",
    "candidate": "scene_suite.py --candidate: a proposed default beside the configuration it changes",
    "comparison": "compare.py: Tables 1 and 2 against nerfstudio's methods",
    "experiment": "run_benchmark.py run by hand or by gpu_suite.sh: one option tried",
    "ddp": "ddp_check.sh: one run on one or two GPUs",
    "qat-phase-speed": "qat_phase_speed.py: nerf-qat field step time per QAT phase",
    "render-speed": "render_speed.py: frame rate and PSNR of compressed files beside a peer",
    "step-profile": "profile_step.py: a training step's time per phase and kernel, its host syncs",
}


def scene_path(scene: str, results: Path = RESULTS) -> Path:
    """The rows file of ``scene``."""
    return results / f"{scene}.jsonl"


def check_row(row: Dict[str, Any]) -> None:
    """Raise ValueError naming the required fields ``row`` lacks (or holds as non-strings) and an unknown kind."""
    bad = [key for key in REQUIRED if not isinstance(row.get(key), str) or not row[key]]
    if bad:
        raise ValueError(f"benchmark row {row.get('label')!r}: missing or not text: {', '.join(bad)}")
    if row["kind"] not in KINDS:
        raise ValueError(f"benchmark row {row['label']!r}: unknown kind {row['kind']!r} (one of {', '.join(KINDS)})")


def append_row(path: Path, row: Dict[str, Any]) -> None:
    """Check ``row`` and append it to ``path``."""
    check_row(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """Every row of ``path`` in order (none if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_by_label(
    path: Path, kind: Optional[str] = None, budget_s: Optional[float] = None
) -> Dict[str, Dict[str, Any]]:
    """The latest row of every label in ``path``, of one ``kind`` and training budget if given."""
    rows: Dict[str, Dict[str, Any]] = {}
    for row in read_rows(path):
        if kind is not None and row.get("kind") != kind:
            continue
        if budget_s is not None and float(row.get("budget_s", -1)) != float(budget_s):
            continue
        rows[row["label"]] = row
    return rows
