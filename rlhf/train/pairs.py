"""Preference pairs for training (the reward model, DPO): rows of a preference file -> pairs over a table of
distinct token sequences, the held-out split, group-packed batches in a seeded order, and their collation.

Input rows (what `rlhf label export` writes; see rlhf/data/preferences.py):
    {"prompt", "chosen", "rejected", "margin"?, "agreement"?, "group_id"?, "split"?: "train"|"heldout", "tie"?,
     "chosen_ended"?, "rejected_ended"?, "weight"?}
(a null value is read as the key's absence, as a `datasets`/Parquet export stores it; "weight" >= 0 is the pair's
weight in the reward loss, 1 when absent: `rlhf label export --weight reliability`)
or Anthropic-HH rows {"chosen", "rejected"} with full transcripts (the shared prefix becomes the prompt), or TRL
conversational rows (lists of messages). Pairs with one `group_id` come from one k-wise ranking: they always share a
batch, and each distinct response of a batch is forwarded once (InstructGPT, Ouyang et al. 2022, sec. 3.5).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.errors import UserError
from rlhf.models.data_source import iter_rows
from rlhf.models.data_source import where as row_where
from rlhf.models.reward import encode_prompt, encode_response
from rlhf.train.progress import say

ASSISTANT = "\n\nAssistant:"  # Anthropic HH transcripts: the prompt ends with the last shared Assistant marker


@dataclass
class Pair:
    chosen: int  # row of the SequenceTable
    rejected: int
    margin: float | None
    agreement: float | None
    tie: bool
    group: str  # pairs of one ranking share a group; a plain pair is its own group
    split: str | None
    where: str  # file:line, for messages
    weight: float | None = None  # the pair's loss weight (the reward stage), None = 1


class Skip(Exception):
    """A row that is counted and reported, not trained on."""


class SequenceTable:
    """Distinct prompt+response token sequences: each is tokenised once (each distinct prompt too) and a batch
    forwards each of its distinct sequences once. `prompt_lens[i]`: how many of seqs[i]'s tokens are the prompt (DPO
    scores the response tokens after it)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.seqs: list[list[int]] = []
        self.prompt_lens: list[int] = []
        self._index: dict[Any, int] = {}
        self._prompts: dict[str, list[int]] = {}

    def add(self, prompt: str | list[dict[str, str]], response: str | list[dict[str, str]], ended: bool = True) -> int:
        """Row of prompt + response; conversational ones (lists of messages) go through the chat template."""
        pkey = json.dumps(prompt) if isinstance(prompt, list) else prompt  # messages are lists: not hashable
        key = (pkey, json.dumps(response) if isinstance(response, list) else response, ended)
        if key not in self._index:
            if pkey not in self._prompts:
                self._prompts[pkey] = encode_prompt(self.tokenizer, prompt)
            prompt_ids = self._prompts[pkey]
            self._index[key] = self.add_ids(prompt_ids + encode_response(self.tokenizer, response, ended,
                                                                         prompt=prompt), len(prompt_ids))
        return self._index[key]

    def add_ids(self, ids: list[int], prompt_len: int = 0) -> int:
        if not ids:
            raise Skip("empty sequence (no tokens)")
        if len(ids) > self.max_length:
            raise Skip(f"longer than max_length={self.max_length} tokens (prompt+response; raise --max_length up to "
                       "the model's context)")
        self.seqs.append(list(ids))
        self.prompt_lens.append(prompt_len)
        return len(self.seqs) - 1


def read_pairs(path: str | Path, table: SequenceTable, ties: str) -> tuple[list[Pair], Counter]:
    """Preference rows -> pairs; a malformed row is a UserError naming file:line and field, a row that cannot be
    trained on (identical or empty responses, too long, a tie with ties=skip) is counted under its reason."""
    pairs, skips = [], Counter()
    for lineno, row in iter_rows(path):  # JSONL, a save_to_disk folder or a hub dataset ORG/NAME[:split]
        where = row_where(path, lineno)
        try:
            pairs.append(parse_row(row, where, table, ties))
        except Skip as e:
            skips[str(e)] += 1
    if not pairs and not skips:
        raise UserError(f"{path}: no rows (the file is empty)")
    return pairs, skips


def parse_row(row: dict[str, Any], where: str, table: SequenceTable, ties: str) -> Pair:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise UserError(f"{where}: field '{key}' missing; expected {{prompt, chosen, rejected}} rows (rlhf label "
                            "export, TRL) or HH rows {chosen, rejected} with full transcripts")
    if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
        prompt, chosen, rejected = _conversational(row, where)
    else:
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str):
                raise UserError(f"{where}: field '{key}' must be a string or a list of messages, got "
                                f"{type(row[key]).__name__}")
        if "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise UserError(f"{where}: field 'prompt' must be a string like chosen and rejected, got "
                                f"{type(row['prompt']).__name__}")
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        else:
            prompt, chosen, rejected = split_shared_prefix(row["chosen"], row["rejected"])
    margin, agreement = _number(row, "margin", where), _number(row, "agreement", where)
    weight = _number(row, "weight", where)
    if weight is not None and weight < 0:
        raise UserError(f"{where}: field 'weight' must be >= 0, got {weight}")
    if agreement is not None and not 0 <= agreement <= 1:
        raise UserError(f"{where}: field 'agreement' must be in [0, 1], got {agreement}")
    split = row.get("split")
    if split is not None and split not in ("train", "heldout"):
        raise UserError(f"{where}: field 'split' must be 'train' or 'heldout', got {split!r}")
    tie = row.get("tie", False)
    if not isinstance(tie, bool):
        raise UserError(f"{where}: field 'tie' must be true or false, got {tie!r}")
    group_id = row.get("group_id")
    if group_id is not None and not isinstance(group_id, (str, int)):
        raise UserError(f"{where}: field 'group_id' must be a string, got {type(group_id).__name__}")
    if not _text(chosen).strip() or not _text(rejected).strip():
        raise Skip("empty chosen or rejected response")
    if chosen == rejected:
        raise Skip("chosen and rejected are identical (no preference to learn)")
    # `rlhf label export` says which response stopped at EOS; one cut at max_new_tokens gets no EOS appended, as
    # PPO scores a cut-off rollout (absent: ended, so other formats keep working).
    ended = {}
    for key in ("chosen_ended", "rejected_ended"):
        ended[key] = True if row.get(key) is None else row[key]
        if not isinstance(ended[key], bool):
            raise UserError(f"{where}: field '{key}' must be true or false, got {ended[key]!r}")
    if tie and ties == "skip":
        raise Skip("tie (ties: skip)")
    return Pair(table.add(prompt, chosen, ended["chosen_ended"]), table.add(prompt, rejected, ended["rejected_ended"]),
                margin, agreement, tie,
                f"group:{group_id}" if group_id is not None else f"row:{where}", split, where, weight)


def _conversational(row: dict[str, Any], where: str) -> tuple[list, list, list]:
    """TRL conversational preference rows: {prompt: [messages], chosen: [messages], rejected: [messages]}, or
    without prompt (the shared leading messages are the prompt). Rendered later through the chat template."""
    from rlhf.models.chat import check_messages, split_conversations

    if not (isinstance(row["chosen"], list) and isinstance(row["rejected"], list)):
        raise UserError(f"{where}: fields 'chosen' and 'rejected' must both be lists of messages or both strings")
    if "prompt" not in row or (isinstance(row["prompt"], str) and len(row["chosen"]) > 1):
        # no prompt, or UltraFeedback-binarized's prompt string with whole conversations in chosen/rejected
        return split_conversations(row["chosen"], row["rejected"], where)
    if not isinstance(row["prompt"], list):
        raise UserError(f"{where}: field 'prompt' must be a list of messages like chosen and rejected")
    return (check_messages(row["prompt"], f"{where}: field 'prompt'"),
            check_messages(row["chosen"], f"{where}: field 'chosen'"),
            check_messages(row["rejected"], f"{where}: field 'rejected'"))


def _text(response: str | list[dict[str, str]]) -> str:
    return response if isinstance(response, str) else "".join(m["content"] for m in response)


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-style full transcripts -> (prompt, chosen response, rejected response) with prompt + response == the
    transcript. The prompt ends after the last shared '\\n\\nAssistant:'; without one, before the last shared
    whitespace (so a word is never split and responses keep their leading space, as in prompt/response data)."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut >= 0:
        cut += len(ASSISTANT)
    else:
        cut = max((i for i, ch in enumerate(shared) if ch.isspace()), default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def split_heldout(cfg: Any, pairs: list[Pair], table: SequenceTable
                  ) -> tuple[list[Pair], list[Pair], str, Counter]:
    """(train, held-out, where the held-out set came from, skips in eval_data)."""
    eval_skips: Counter = Counter()
    if any(p.split == "heldout" for p in pairs):
        if cfg.eval_data:
            raise UserError(f"{cfg.data} has split=heldout rows and --eval_data {cfg.eval_data} was also given; "
                            "drop --eval_data to use the file's held-out rows, or remove the split fields")
        train = [p for p in pairs if p.split != "heldout"]
        evals, source = [p for p in pairs if p.split == "heldout"], "rows with split=heldout"
    elif cfg.eval_data:
        train = pairs
        evals, eval_skips = read_pairs(cfg.eval_data, table, getattr(cfg, "ties", "skip"))  # DPO: skip
        source = f"eval_data {cfg.eval_data}"
    elif cfg.eval_fraction > 0:
        groups = sorted({p.group for p in pairs})
        random.Random(cfg.seed).shuffle(groups)
        n_eval = round(cfg.eval_fraction * len(groups))
        if n_eval == 0 or n_eval == len(groups):
            raise UserError(f"{cfg.data}: {len(groups)} groups are too few to hold out eval_fraction="
                            f"{cfg.eval_fraction} of them; add data, pass --eval_data, or set --eval_fraction 0")
        held = set(groups[:n_eval])
        train = [p for p in pairs if p.group not in held]
        evals, source = [p for p in pairs if p.group in held], f"seeded {cfg.eval_fraction:g} of the groups"
    else:
        return pairs, [], "none (eval_fraction 0)", eval_skips
    return train, evals, source, eval_skips


def group_batches(pairs: list[Pair], batch_size: int, seed: int | None = None) -> list[list[Pair]]:
    """Pairs packed into micro-batches of at most `batch_size` pairs, a group's pairs always together (a larger
    group is a batch of its own). `seed` shuffles the order of the groups; None keeps the file order."""
    groups: dict[str, list[Pair]] = {}
    for p in pairs:
        groups.setdefault(p.group, []).append(p)
    order = list(groups.values())
    if seed is not None:
        random.Random(seed).shuffle(order)
    batches, cur = [], []
    for g in order:
        if cur and len(cur) + len(g) > batch_size:
            batches.append(cur)
            cur = []
        cur = cur + g
    if cur:
        batches.append(cur)
    return batches


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def iter_batches(pairs: list[Pair], batch_size: int, seed: int, rank: int, world: int, start: int = 0):
    """Endless micro-batches: a fresh seeded group order per epoch; rank r takes every world-th batch; the first
    `start` micro-batches are skipped (exact resume)."""
    epoch, produced = 0, 0
    while True:
        for batch in group_batches(pairs, batch_size, epoch_seed(seed, epoch))[rank::world]:
            if produced >= start:
                yield batch
            produced += 1
        epoch += 1


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, longest) long: the sequences left-aligned, padded with pad_id / 0."""
    n = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return input_ids, mask


def collate_pairs(pairs: list[Pair], table: SequenceTable, pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded row per distinct sequence of the batch (U rows); chosen/rejected (P,) index those rows.

    Returns input_ids, attention_mask (U, T); chosen, rejected (P,) long; margin (P,) float (0 where absent);
    weight (P,) float (1 where absent);
    tie (P,) bool; group (U,) long, the row's prompt group (for `shared_prefix_layout`); prompt_len (U,) long, the
    prompt tokens at the start of each row; seq (U,) long, each row's index in the table."""
    rows: dict[int, int] = {}
    row_group: dict[int, int] = {}  # row -> index of its pair's group (the responses of one prompt)
    groups: dict[str, int] = {}
    for p in pairs:
        g = groups.setdefault(p.group, len(groups))
        for seq in (p.chosen, p.rejected):
            row_group.setdefault(rows.setdefault(seq, len(rows)), g)
    input_ids, mask = right_pad([table.seqs[i] for i in rows], pad_id)
    return {"input_ids": input_ids, "attention_mask": mask,
            "chosen": torch.tensor([rows[p.chosen] for p in pairs]),
            "rejected": torch.tensor([rows[p.rejected] for p in pairs]),
            "margin": torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32),
            "tie": torch.tensor([p.tie for p in pairs], dtype=torch.bool),
            "weight": torch.tensor([1.0 if p.weight is None else p.weight for p in pairs], dtype=torch.float32),
            "group": torch.tensor([row_group[r] for r in range(len(rows))]),
            "prompt_len": torch.tensor([table.prompt_lens[i] for i in rows], dtype=torch.long),
            "seq": torch.tensor(list(rows), dtype=torch.long)}


def report_skips(cfg: Any, tag: str, skips: dict[str, Counter]) -> None:
    """Say how many rows of each input (a config field naming a file) were skipped and why; with cfg.strict, stop
    with an error instead."""
    for name, counts in skips.items():
        if not counts:
            continue
        path = getattr(cfg, name)
        lines = ", ".join(f"{n} x {reason}" for reason, n in counts.most_common())
        if cfg.strict:
            raise UserError(f"{path}: {sum(counts.values())} rows cannot be used ({lines}); fix them, or drop "
                            "--strict to skip them")
        say(f"[{tag}] {path}: skipped {sum(counts.values())} rows: {lines}")


def _number(row: dict[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: field '{key}' must be a finite number, got {value!r}")
    return float(value)




def context_length(cfg: Any) -> int:
    """The longest prompt+response to train on: cfg.max_length, else the context of the model cfg.model (read from
    its config, nothing loaded), else 2048; a max_length beyond the context is a one-line error."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError) as e:
        raise UserError(f"could not read the model config of '{cfg.model}': {str(e).splitlines()[0]} (train the SFT "
                        "model first with `rlhf sft`, or pass --model FOLDER_OR_HUB_ID)") from None
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if cfg.max_length and context and cfg.max_length > context:
        raise UserError(f"--max_length {cfg.max_length} is longer than the model's context ({context}); lower it")
    return cfg.max_length or context or 2048
