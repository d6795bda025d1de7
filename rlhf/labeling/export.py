"""From raw judgments to training pairs: votes per comparison, consensus, and the export files.

A *comparison* is an unordered pair of responses of one task, keyed `(task_id, i, j)` with i < j. Each current
(not superseded) pairwise or ranking judgment casts one vote on each comparison it covers:
+1 (response i better), -1 (response j better) or 0 (tie, or "both bad"). Skips and flags cast no vote.

Consensus: the sign of the vote sum; a zero sum (a tie, or an even split) exports no pair.
  agreement = votes on the winning side / all votes on the comparison
  margin    = mean strength margin of the winning votes (Llama 2's small-margin scale below); omitted when any
              winning vote has no strength (rankings, imported data)
A ranking contributes all its pairs (as `rlhf.core.ranking_to_pairs`); they share `group_id` = "task-<id>".
Rows carry `chosen_ended` / `rejected_ended` (did that response stop at EOS, or was it cut at max_new_tokens) when
the task knows it (tasks from `rlhf sample` files with `ended`); absent means ended.
Gold tasks (known answers, for measuring labelers) and tasks flagged unsafe/broken are left out of the pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from rlhf.io import atomic_write_text, write_jsonl
from rlhf.labeling.store import KINDS, JudgmentRecord, Store, TaskRecord

# Touvron et al. 2023 (Llama 2), table 28 "margin small": preference strength -> margin in the reward loss.
STRENGTH_MARGIN = {"much_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3}
FORMAT = "rlhf-preferences-v1"

Unit = tuple[int, int, int]  # (task_id, i, j), i < j


@dataclass(frozen=True)
class Vote:
    user: str
    sign: int  # +1: response i better, -1: response j better, 0: no preference
    margin: float | None


@dataclass(frozen=True)
class ConsensusPair:
    task_id: int
    better: int
    worse: int
    votes: tuple[Vote, ...]
    agreement: float
    margin: float | None
    group_id: str | None
    split: str | None


def default_ranking_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """(better, worse) index pairs of a stored ranking, ties giving none: `rlhf.core.ranking_to_pairs`' definition
    (InstructGPT's K-choose-2), written out here because rlhf.core imports torch and the label store must not (the
    store checked the ranks when the judgment was written; tests/test_layers.py checks the two agree)."""
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]


def collect_votes(
    judgments: Iterable[JudgmentRecord],
    tasks: Mapping[int, TaskRecord],
    ranking_pairs: Callable[[list[int]], list[tuple[int, int]]] = default_ranking_pairs,
) -> dict[Unit, list[Vote]]:
    """Votes per comparison from current judgments (pass `Store.judgments(current_only=True)`)."""
    votes: dict[Unit, list[Vote]] = {}
    for j in judgments:
        if j.kind not in KINDS:
            continue
        if j.kind == "pairwise":
            a = j.answer
            if a["choice"] == "better":
                sign = 1 if a["better"] == 0 else -1
                margin = STRENGTH_MARGIN.get(a.get("strength") or "")
            else:
                sign, margin = 0, None
            votes.setdefault((j.task_id, 0, 1), []).append(Vote(j.user_name, sign, margin))
            continue
        ranks = j.answer["ranks"]
        ordered = set(ranking_pairs(ranks))
        for i in range(len(ranks)):
            for k in range(i + 1, len(ranks)):
                sign = 1 if (i, k) in ordered else (-1 if (k, i) in ordered else 0)
                votes.setdefault((j.task_id, i, k), []).append(Vote(j.user_name, sign, None))
    return votes


def excluded_tasks(tasks: Mapping[int, TaskRecord], judgments: Iterable[JudgmentRecord]) -> dict[str, set[int]]:
    flagged = {j.task_id for j in judgments if j.kind == "flag"}
    gold = {t.id for t in tasks.values() if t.gold_ranks is not None}
    return {"gold": gold, "flagged": flagged}


def consensus_pairs(
    tasks: Mapping[int, TaskRecord],
    current: list[JudgmentRecord],
    ranking_pairs: Callable[[list[int]], list[tuple[int, int]]] = default_ranking_pairs,
) -> tuple[list[ConsensusPair], dict[str, int]]:
    """Consensus pairs from current (not superseded) judgments, and counts of what was left out and why."""
    excl = excluded_tasks(tasks, current)
    skip_tasks = excl["gold"] | excl["flagged"]
    votes = collect_votes((j for j in current if j.task_id not in skip_tasks), tasks, ranking_pairs)
    pairs: list[ConsensusPair] = []
    no_consensus = 0
    for (tid, i, k), vs in sorted(votes.items()):
        total = sum(v.sign for v in vs)
        if total == 0:
            no_consensus += 1
            continue
        win = 1 if total > 0 else -1
        winners = [v for v in vs if v.sign == win]
        margins = [v.margin for v in winners]
        margin = sum(margins) / len(margins) if all(m is not None for m in margins) else None
        better, worse = (i, k) if win > 0 else (k, i)
        task = tasks[tid]
        pairs.append(
            ConsensusPair(
                task_id=tid,
                better=better,
                worse=worse,
                votes=tuple(vs),
                agreement=len(winners) / len(vs),
                margin=margin,
                group_id=f"task-{tid}" if task.kind == "ranking" else None,
                split=task.split,
            )
        )
    counts = {
        "tasks": len(tasks),
        "judgments": len(current),
        "gold_tasks_excluded": len(excl["gold"]),
        "flagged_tasks_excluded": len(excl["flagged"] - excl["gold"]),
        "comparisons_with_votes": len(votes),
        "no_consensus": no_consensus,
        "pairs": len(pairs),
    }
    return pairs, counts


def pair_row(p: ConsensusPair, task: TaskRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": task.prompt,
        "chosen": task.responses[p.better],
        "rejected": task.responses[p.worse],
        "agreement": round(p.agreement, 6),
        "n_votes": len(p.votes),
        "task_id": p.task_id,
    }
    if task.ended is not None:  # which response stopped at EOS (the reward stage appends EOS only to those)
        row["chosen_ended"] = bool(task.ended[p.better])
        row["rejected_ended"] = bool(task.ended[p.worse])
    if p.margin is not None:
        row["margin"] = round(p.margin, 6)
    if p.group_id is not None:
        row["group_id"] = p.group_id
    if p.split is not None:
        row["split"] = p.split
    return row


def raw_row(j: JudgmentRecord, superseded_by: int | None) -> dict[str, Any]:
    return {
        "judgment_id": j.id,
        "client_id": j.client_id,
        "task_id": j.task_id,
        "assignment_id": j.assignment_id,
        "user": j.user_name,
        "role": j.user_role,
        "created_at": j.created_at.isoformat(),
        "kind": j.kind,
        "answer": j.answer,
        "raw": j.raw,
        "shown_order": j.shown_order,
        "time_spent_ms": j.time_spent_ms,
        "supersedes": j.supersedes_id,
        "superseded_by": superseded_by,
    }


def build_export(store: Store) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(pair rows, raw judgment rows, meta) from the store, without writing anything."""
    tasks = {t.id: t for t in store.tasks()}
    all_j = store.judgments()
    superseded_by = {j.supersedes_id: j.id for j in all_j if j.supersedes_id is not None}
    current = [j for j in all_j if j.id not in superseded_by]
    pairs, counts = consensus_pairs(tasks, current)
    rows = [pair_row(p, tasks[p.task_id]) for p in pairs]
    raw = [raw_row(j, superseded_by.get(j.id)) for j in all_j]
    sim = store.get_meta("simulation")
    splits: dict[str, int] = {}
    for r in rows:
        if "split" in r:
            splits[r["split"]] = splits.get(r["split"], 0) + 1
    meta = {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "db": make_url(store.url).render_as_string(hide_password=True),
        "counts": {**counts, "raw_judgments": len(raw)},
        "pair_splits": splits,
        "margin_map": STRENGTH_MARGIN,
        "consensus": "sign of the vote sum per comparison; agreement = winning votes / votes",
        "bayes_accuracy": sim.get("bayes_accuracy") if sim else None,
        "simulation": sim,
    }
    return rows, raw, meta


def export(store: Store, out: str | Path, raw_out: str | Path | None = None) -> dict[str, Any]:
    """Write consensus pairs to `out` (TRL-style JSONL), every raw judgment to `raw_out` (default
    `<out stem>.raw.jsonl`) and `<out stem>.meta.json`. Returns the meta dict."""
    from rlhf.data.preferences import write_preferences

    out = Path(out)
    raw_out = Path(raw_out) if raw_out else out.with_name(out.stem + ".raw.jsonl")
    rows, raw, meta = build_export(store)
    write_preferences(out, rows)
    write_jsonl(raw_out, raw)
    meta["files"] = {"pairs": out.name, "raw": raw_out.name}
    atomic_write_text(meta_path(out), json.dumps(meta, indent=2) + "\n")
    return meta


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")
