"""What a run folder holds, and the one way every reader (eval, doctor, report, the demo) reads it.

A *stage folder* is any folder with a `metrics.jsonl` or an `eval.json`: the resolved `config.yaml`, `metrics.jsonl`
(one JSON object per logged step, names in docs/metrics.md), and `summary.json`, written last, whose presence marks
the stage complete. summary.json carries "kind" (the stage's name in rlhf.stages.registry: sft, reward, ppo, rloo,
grpo, reinforce_pp, dpo, value-pretrain, eval, ...) and, where it means something, "algorithm". A *run folder*
holds stage folders one level down (base/, sft/, reward/, ppo/, eval/ ...). `load_run` accepts either.

Torch-free (JSON and YAML only), so `rlhf doctor` and `rlhf report` start instantly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf.errors import UserError
from rlhf.io import atomic_write_text

# pipeline order, for display; other folders follow alphabetically
ORDER = ["base", "sft", "reward", "value", "ppo", "rloo", "grpo", "reinforce_pp", "dpo", "eval"]
ON_POLICY = ("ppo", "rloo", "grpo", "reinforce_pp")  # sample from the policy, score, optimise; only PPO has a critic
CRITIC_FREE = ("rloo", "grpo", "reinforce_pp")  # on-policy algorithms whose baseline is not a value model
POLICY_KINDS = (*ON_POLICY, "dpo")  # stages whose output folder is a trained policy that `rlhf eval` compares


def write_summary(out_dir: str | Path, summary: dict[str, Any], kind: str | None = None,
                  algorithm: str | None = None) -> Path:
    """Write `summary.json` last: its presence marks the stage as complete. `kind` (the stage's registry name) and
    `algorithm` go in as its first keys, so readers know the stage without guessing from its metric names."""
    head = {k: v for k, v in (("kind", kind), ("algorithm", algorithm)) if v is not None}
    return atomic_write_text(Path(out_dir) / "summary.json", json.dumps(head | summary, indent=2) + "\n")


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
    kind: str  # a stage of rlhf.stages.registry (sft, reward, ppo, rloo, grpo, dpo, value-pretrain, eval...) or unknown
    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # problems met while reading (e.g. a truncated last line)
    algorithm: str | None = None  # summary.json's "algorithm" (e.g. the estimator of an on-policy run)

    @property
    def on_policy(self) -> bool:
        return self.kind in ON_POLICY

    @property
    def has_critic(self) -> bool:
        return self.kind == "ppo"

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
    kind = summary.get("kind") if summary and isinstance(summary.get("kind"), str) else stage_kind(rows, ev, config)
    algorithm = summary.get("algorithm") if summary and isinstance(summary.get("algorithm"), str) else None
    return Stage(folder.name, kind, folder, rows, config, summary, ev, notes, algorithm)


def stage_kind(rows: list[dict[str, Any]], ev: dict[str, Any] | None, config: dict[str, Any] | None = None) -> str:
    """Which stage wrote these metrics, for a folder whose summary.json has no "kind" (a run still going, one that
    crashed, or one written before the kind was recorded): from the metric names (docs/metrics.md) and, where the
    names are shared, an option only one algorithm's config.yaml has; never from the folder name."""
    keys = set().union(*rows) if rows else set()
    if "objective/kl" in keys or "objective/scores" in keys:
        if any(k.startswith("value/") or k == "loss/value" for k in keys):
            return "ppo"
        if "loss/kl" in keys:  # GRPO: the KL is a loss term, not a reward penalty
            return "grpo"
        if "group_baseline" in (config or {}):  # REINFORCE++ logs the group spread too when it samples k per prompt
            return "reinforce_pp"
        if "objective/group_score_std" in keys:
            return "rloo"
        if keys & {"policy/approxkl", "loss/policy"}:  # an on-policy run without a critic and without groups
            return "reinforce_pp"
        return "ppo"  # a PPO run's first rows (a critic warm-up logs no policy keys)
    if any(k.startswith("dpo/") or k.startswith("eval/dpo_") for k in keys):
        return "dpo"
    if any(k.startswith("vpt/") for k in keys):
        return "value-pretrain"
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


# ---------------------------------------------------------------------------------------------------------------
# what readers ask of a stage


def rm_accuracy(data: dict[str, Any] | None) -> tuple[float | None, float | None, int | None]:
    """(held-out accuracy, Bayes-optimal accuracy, held-out pairs) of a reward model from one of its records: the
    reward stage's summary.json, eval.json or a metrics row (eval/rm_accuracy, eval/rm_bayes_accuracy,
    eval/rm_pairs), or the "rm" block of an eval stage's eval.json (accuracy, bayes_accuracy, pairs). All None when
    the record holds no accuracy."""
    if not isinstance(data, dict):
        return None, None, None
    acc = number(data.get("eval/rm_accuracy", data.get("accuracy")))
    if acc is None:
        return None, None, None
    bayes = number(data.get("eval/rm_bayes_accuracy", data.get("bayes_accuracy")))
    pairs = data.get("eval/rm_pairs", data.get("eval_pairs", data.get("pairs")))
    return acc, bayes, int(pairs) if number(pairs) and pairs > 0 else None


def stage_rm_accuracy(s: Stage) -> tuple[float | None, float | None, int | None]:
    """The reward model's held-out accuracy as a stage records it: an eval stage in its eval.json's "rm" block; a
    reward stage in its summary, else its eval.json, else its last evaluated metrics row."""
    if s.kind == "eval":
        return rm_accuracy((s.eval or {}).get("rm"))
    last_row = next((r for r in reversed(s.rows) if "eval/rm_accuracy" in r), None)
    for src in (s.summary, s.eval, last_row):
        found = rm_accuracy(src)
        if found[0] is not None:
            return found
    return None, None, None


def policy_run(folder: str | Path) -> dict[str, Any]:
    """The resolved config of the policy-training run whose output is `folder` (any algorithm of POLICY_KINDS), or
    {} when `folder` is not one (a hub id, an SFT folder, a bare model folder). Keys the eval reads: the reference
    (`ref`, else `policy`), `temperature`, `max_new_tokens`; plus "kind" (the stage that wrote it)."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.yaml").is_file():
        return {}
    s = load_stage(folder)
    # a folder without metrics or kind (a copied model folder): today's PPO config still names its start and KL
    legacy_ppo = "policy" in s.config and "kl_coef" in s.config
    if s.kind not in POLICY_KINDS and not legacy_ppo:
        return {}
    return {**s.config, "kind": s.kind if s.kind in POLICY_KINDS else "ppo"}


def number(x: Any) -> float | None:
    """x as a float if it is a finite number (not a bool), else None."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None
