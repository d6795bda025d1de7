"""Read what a stage left on disk: metrics.jsonl, config.yaml, summary.json, eval.json, checkpoint/.

A *stage folder* is any folder with a `metrics.jsonl` or an `eval.json`. A *run folder* holds stage folders one
level down (base/, sft/, reward/, ppo/, eval/ ...). `load_run` accepts either and returns the stages found.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf.errors import UserError

# pipeline order, for display; other folders follow alphabetically
ORDER = ["base", "sft", "reward", "ppo", "eval"]


@dataclass
class Series:
    """One metric over a stage: the steps where it was logged and its values (NaN/inf kept)."""

    steps: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.values)

    def finite(self) -> Series:
        keep = [i for i, v in enumerate(self.values) if math.isfinite(v)]
        return Series([self.steps[i] for i in keep], [self.values[i] for i in keep])


@dataclass
class Stage:
    name: str  # folder name as shown to the user, e.g. "ppo"
    kind: str  # sft | reward | ppo | eval | unknown
    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # problems met while reading (e.g. a truncated last line)

    def series(self, key: str) -> Series:
        """Rows that logged `key` with a number (eval rows and train rows of SFT share `step`)."""
        steps, values = [], []
        for r in self.rows:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                steps.append(int(r.get("step", len(steps))))
                values.append(float(v))
        return Series(steps, values)

    def has(self, key: str) -> bool:
        return any(key in r for r in self.rows)

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.rows if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None


def load_run(path: str | Path) -> list[Stage]:
    """The stages in `path` (itself a stage folder, or a run folder of stage folders). Raises UserError when the
    folder is missing or holds no metrics at all."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such folder; pass a run folder (e.g. runs/demo) or a stage folder (runs/demo/ppo)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds metrics.jsonl, not the file")
    if _is_stage(root):
        folders = [root]
    else:
        subs = [p for p in root.iterdir() if p.is_dir() and _is_stage(p)]
        folders = sorted(subs, key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    stages = [load_stage(f) for f in folders]
    if not any(s.rows or s.eval for s in stages):
        raise UserError(f"{root}: no metrics found (no non-empty metrics.jsonl or eval.json in it or in its "
                        "subfolders); point at a run folder such as runs/demo or a stage folder such as runs/demo/ppo")
    return stages


def load_stage(folder: Path) -> Stage:
    notes: list[str] = []
    rows = read_metrics(folder / "metrics.jsonl", notes) if (folder / "metrics.jsonl").exists() else []
    config = _read_yaml(folder / "config.yaml", notes)
    summary = _read_json(folder / "summary.json", notes)
    ev = _read_json(folder / "eval.json", notes)
    return Stage(folder.name, stage_kind(rows, ev), folder, rows, config, summary, ev, notes)


def stage_kind(rows: list[dict[str, Any]], ev: dict[str, Any] | None) -> str:
    """Which stage wrote these metrics, from the metric names (docs/metrics.md), not from the folder name."""
    keys = set().union(*rows) if rows else set()
    if "objective/kl" in keys or "objective/scores" in keys:
        return "ppo"
    if any(k.startswith("rm/") or k.startswith("eval/rm_") for k in keys):
        return "reward"
    if "sft/loss" in keys or "eval/loss" in keys:
        return "sft"
    if ev is not None and ("win_rate" in ev or "gold" in ev or "rm" in ev):
        return "eval"
    if ev is not None and "eval/rm_accuracy" in ev:
        return "reward"
    return "unknown"


def read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl rows. A bad *last* line is what a crash mid-write leaves: it is skipped with a note. A bad
    line before it means the file was edited or corrupted: that is an error naming file and line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as e:  # JSONDecodeError is a ValueError
            if k == len(numbered) - 1:
                notes.append(f"{path}:{lineno}: last line is incomplete (the run was probably killed mid-write); "
                             "skipped")
                break
            raise UserError(f"{path}:{lineno}: not a valid metrics row ({e}); fix or delete that line") from None
        rows.append(obj)
    return rows


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        notes.append(f"{path}: not valid JSON ({e}); ignored")
        return None
    return obj if isinstance(obj, dict) else None


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        notes.append(f"{path}: not valid YAML ({str(e).splitlines()[0]}); config-based advice is off")
        return {}
    return obj if isinstance(obj, dict) else {}


def _is_stage(folder: Path) -> bool:
    return (folder / "metrics.jsonl").is_file() or (folder / "eval.json").is_file()
