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
A task imported with a multi-turn prompt (source "prompt_messages") exports a conversational row: prompt, chosen
and rejected are lists of {"role", "content"} messages (the responses one assistant message each).
`weight="reliability"` adds `weight` = max(0, 2q - 1) per pair from the labelers' estimated accuracies
(rlhf/labeling/reliability.py).

Files: JSONL (`fmt="jsonl"`: OUT, <stem>.raw.jsonl, <stem>.meta.json), or a folder (`fmt="datasets"`: a
`Dataset.save_to_disk` folder; `fmt="parquet"`: preferences.parquet) holding also preferences.raw.jsonl,
preferences.meta.json and a dataset card README.md (fields, counts, sources, labelers, date). In the Arrow table
every row has every column; a key a JSONL row leaves out is null there (the reward stage reads null as absent).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from rlhf.errors import UserError
from rlhf.io import atomic_write_text, write_jsonl
from rlhf.labeling.store import KINDS, JudgmentRecord, Store, TaskRecord

# Touvron et al. 2023 (Llama 2), table 28 "margin small": preference strength -> margin in the reward loss.
STRENGTH_MARGIN = {"much_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3}
FORMAT = "rlhf-preferences-v1"
FILE_FORMATS = ("jsonl", "datasets", "parquet")
WEIGHTS = ("none", "reliability")
# the columns of the Arrow table (datasets, Parquet), in order; "weight" only with --weight reliability
COLUMNS = ("prompt", "chosen", "rejected", "agreement", "margin", "group_id", "split", "chosen_ended",
           "rejected_ended", "n_votes", "task_id", "weight")
FIELD_HELP = {
    "prompt": "the prompt: text, or a list of {role, content} messages (a multi-turn conversation)",
    "chosen": "the preferred response (text, or one assistant message when the prompt is messages)",
    "rejected": "the other response",
    "agreement": "votes on the winning side / all votes on this comparison",
    "margin": "mean strength of the winning votes (much better 1, better 2/3, slightly better 1/3); null: unknown",
    "group_id": "shared by the pairs of one ranking task (keep them in one batch); null: a plain pair",
    "split": "train or heldout; null: not assigned",
    "chosen_ended": "did the chosen response stop at EOS (false: cut at max_new_tokens); null: ended",
    "rejected_ended": "the same for the rejected response",
    "n_votes": "labelers who voted on this comparison",
    "task_id": "the task in the label store",
    "weight": "loss weight max(0, 2q - 1), q = P(chosen truly better) from the labelers' estimated accuracies",
}

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
    messages = task.source.get("prompt_messages") if isinstance(task.source, dict) else None
    if messages:  # a conversational prompt: a conversational row (the reward stage applies the chat template)
        prompt: Any = messages
        chosen: Any = [{"role": "assistant", "content": task.responses[p.better]}]
        rejected: Any = [{"role": "assistant", "content": task.responses[p.worse]}]
    else:
        prompt, chosen, rejected = task.prompt, task.responses[p.better], task.responses[p.worse]
    row: dict[str, Any] = {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
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


def build_export(store: Store, weight: str = "none") -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(pair rows, raw judgment rows, meta) from the store, without writing anything."""
    from rlhf.labeling import reliability

    if weight not in WEIGHTS:
        raise UserError(f"--weight {weight!r}: expected one of {', '.join(WEIGHTS)}")
    tasks = {t.id: t for t in store.tasks()}
    all_j = store.judgments()
    superseded_by = {j.supersedes_id: j.id for j in all_j if j.supersedes_id is not None}
    current = [j for j in all_j if j.id not in superseded_by]
    pairs, counts = consensus_pairs(tasks, current)
    rows = [pair_row(p, tasks[p.task_id]) for p in pairs]
    rel = reliability.estimate(tasks, current)
    rel_meta: dict[str, Any] = {**rel.summary(), "weight": weight}
    if weight == "reliability" and pairs:
        if rel.fallback_accuracy is None:
            raise UserError("--weight reliability: no labeler's accuracy can be estimated (no comparison has two "
                            "labelers or a gold order); add tasks with --overlap 2 or more, or gold tasks, or export "
                            "without --weight")
        weights, against = reliability.pair_weights(pairs, rel)
        for r, w in zip(rows, weights):
            r["weight"] = round(w, 6)
        rel_meta |= {"pairs_against_posterior": against, "mean_weight": sum(weights) / len(weights)}
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
        "reliability": rel_meta,
        "labelers": _labelers(current),
        "sources": _sources(tasks),
    }
    return rows, raw, meta


def _labelers(current: list[JudgmentRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j in current:
        d = out.setdefault(j.user_name, {"role": j.user_role, "judgments": 0})
        d["judgments"] += j.kind in KINDS
    return dict(sorted(out.items()))


def _sources(tasks: Mapping[int, TaskRecord]) -> dict[str, int]:
    """tasks per origin: 'import FILE (FORMAT)' or 'samples FILE (MODEL)'."""
    out: dict[str, int] = {}
    for t in tasks.values():
        src = t.source if isinstance(t.source, dict) else {}
        if "format" in src:
            key = f"import {src.get('file')} ({src['format']})"
        else:
            key = f"samples {src.get('file', '?')}" + (f" ({src['model']})" if src.get("model") else "")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def export(store: Store, out: str | Path, raw_out: str | Path | None = None, *, fmt: str = "jsonl",
           weight: str = "none") -> dict[str, Any]:
    """Write consensus pairs to `out` (TRL-style JSONL), every raw judgment to `raw_out` (default
    `<out stem>.raw.jsonl`) and `<out stem>.meta.json`; with fmt "datasets"/"parquet", `out` is a folder (see the
    module doc). Returns the meta dict."""
    from rlhf.data.preferences import check_pair_row, write_preferences

    if fmt not in FILE_FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FILE_FORMATS)}")
    out = Path(out)
    rows, raw, meta = build_export(store, weight)
    if fmt == "jsonl":
        raw_out = Path(raw_out) if raw_out else out.with_name(out.stem + ".raw.jsonl")
        write_preferences(out, rows)
        write_jsonl(raw_out, raw)
        meta["files"] = {"pairs": out.name, "raw": raw_out.name}
        atomic_write_text(meta_path(out), json.dumps(meta, indent=2) + "\n")
        return meta
    for n, row in enumerate(rows, start=1):
        check_pair_row(row, f"row {n}")
    table = arrow_rows(rows)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if out.exists() and not (out / "preferences.meta.json").exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: a folder that holds something other than an earlier export; choose a new or "
                        "empty folder")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt == "datasets":
            import datasets  # lazy: slow to import

            datasets.Dataset.from_list(table).save_to_disk(str(tmp))
            pairs_name = "(save_to_disk)"
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(table), tmp / "preferences.parquet")
            pairs_name = "preferences.parquet"
        write_jsonl(tmp / "preferences.raw.jsonl", raw)
        meta["files"] = {"pairs": pairs_name, "raw": "preferences.raw.jsonl", "card": "README.md"}
        atomic_write_text(tmp / "preferences.meta.json", json.dumps(meta, indent=2) + "\n")
        atomic_write_text(tmp / "README.md", dataset_card(meta, fmt, rows))
        if out.exists():  # an earlier export: replaced whole
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def arrow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every column (null where a JSONL row leaves a key out), for one Arrow table. One Arrow column holds
    one type, so text and conversational prompts cannot be mixed: refused with the first row of each."""
    kinds = {isinstance(r["prompt"], list) for r in rows}
    if len(kinds) > 1:
        first_text = next(n for n, r in enumerate(rows, 1) if not isinstance(r["prompt"], list))
        first_msgs = next(n for n, r in enumerate(rows, 1) if isinstance(r["prompt"], list))
        raise UserError(f"the export mixes text prompts (e.g. row {first_text}) and conversational ones (e.g. row "
                        f"{first_msgs}), which one Arrow column cannot hold; export --format jsonl, or import the "
                        "two kinds into separate stores")
    columns = [c for c in COLUMNS if any(c in r for r in rows)] or list(COLUMNS[:4])
    extra = sorted({k for r in rows for k in r} - set(columns))
    return [{c: r.get(c) for c in columns + extra} for r in rows]


def dataset_card(meta: dict[str, Any], fmt: str, rows: list[dict[str, Any]]) -> str:
    """README.md for a datasets/Parquet export: what the rows hold, how many, where from, by whom, when."""
    c = meta["counts"]
    rel = meta.get("reliability", {}).get("labelers", {})
    head = ["---", "tags: [rlhf, preference, reward-model]"]
    if fmt == "parquet":
        head += ["configs:", "- config_name: default", "  data_files: preferences.parquet"]
    load = ('datasets.load_from_disk("THIS_FOLDER")' if fmt == "datasets"
            else 'datasets.load_dataset("parquet", data_files="THIS_FOLDER/preferences.parquet")["train"]')
    lines = [*head, "---", "", "# Preference pairs", "",
             f"Exported by `rlhf label export --format {fmt}` ({meta['format']}) on {meta['created_at']} from the "
             f"label store `{meta['db']}`.", "", f"Load: `{load}`. Consensus: {meta['consensus']}.", "",
             "## Counts", "", "| what | count |", "|---|---|"]
    lines += [f"| pairs | {c['pairs']} |"]
    lines += [f"| pairs with split {k} | {v} |" for k, v in sorted(meta.get("pair_splits", {}).items())]
    lines += [f"| {k.replace('_', ' ')} | {c[k]} |" for k in ("tasks", "judgments", "comparisons_with_votes",
              "no_consensus", "gold_tasks_excluded", "flagged_tasks_excluded", "raw_judgments") if k in c]
    if meta.get("bayes_accuracy") is not None:
        lines.append(f"| Bayes-optimal accuracy (simulated labelers) | {meta['bayes_accuracy']:.4f} |")
    lines += ["", "## Sources (tasks)", "", "| source | tasks |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in meta.get("sources", {}).items()]
    lines += ["", "## Labelers", "", "| labeler | role | judgments | estimated accuracy |", "|---|---|---|---|"]
    for name, d in meta.get("labelers", {}).items():
        a = rel.get(name, {}).get("accuracy")
        lines.append(f"| {name} | {d['role']} | {d['judgments']} | {'–' if a is None else f'{a:.3f}'} |")
    present = [k for k in COLUMNS if any(k in r for r in rows)] or list(COLUMNS[:4])
    lines += ["", "## Fields", "", "| field | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {FIELD_HELP[k]} |" for k in present]
    lines += ["", "Also here: `preferences.raw.jsonl` (every judgment, append-only) and `preferences.meta.json`.", ""]
    return "\n".join(lines)


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")
