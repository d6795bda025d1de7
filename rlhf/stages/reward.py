"""Reward model: a scalar head on the SFT model, trained with the pairwise Bradley-Terry loss on preference pairs,
then normalised so its reward has mean 0 and std 1 on SFT samples. Runs through `accelerate` like `rlhf sft`.

    rlhf reward --model runs/x/sft --data runs/x/preferences.jsonl --out runs/x/reward

Input rows (what `rlhf label export` writes; see rlhf/data/preferences.py):
    {"prompt", "chosen", "rejected", "margin"?, "agreement"?, "group_id"?, "split"?: "train"|"heldout", "tie"?}
or Anthropic-HH rows {"chosen", "rejected"} with full transcripts (the shared prefix becomes the prompt).
Pairs with one `group_id` come from one k-wise ranking: they always share a batch, and each distinct response of a
batch is forwarded once (InstructGPT, Ouyang et al. 2022, sec. 3.5). Options and outputs: docs/reward.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhf.artifacts import write_summary
from rlhf.config import (
    EarlyStoppingOptions,
    LoopOptions,
    LoRAOptions,
    ModelOptions,
    OptimOptions,
    PreferenceDataOptions,
    RunOptions,
    TrainPrecisionOptions,
    check,
    opt,
    save_config,
)
from rlhf.core import pairwise_loss
from rlhf.errors import UserError
from rlhf.io import atomic_write_text
from rlhf.models.data_source import iter_rows
from rlhf.models.data_source import where as row_where
from rlhf.models.reward import FORMAT, REWARD_CONFIG, LastTokenScorer, encode_prompt, encode_response  # noqa: F401
from rlhf.models.scalar import shared_prefix_layout
from rlhf.stages.common import stage_outputs
from rlhf.train.accelerator import make_accelerator
from rlhf.train.early_stopping import BestHeldout
from rlhf.train.loop import train_loop
from rlhf.train.lora import check_vocab, make_trainable
from rlhf.train.pairs import (  # noqa: F401  (moved to rlhf.train.pairs; reward.NAME still works)
    ASSISTANT,
    Pair,
    SequenceTable,
    Skip,
    collate_pairs,
    context_length,
    epoch_seed,
    group_batches,
    iter_batches,
    parse_row,
    read_pairs,
    report_skips,
    right_pad,
    split_heldout,
    split_shared_prefix,
)
from rlhf.train.progress import say
from rlhf.train.seeds import set_seed

STAT_KEYS = ("loss", "accuracy", "margin_mean", "tie_loss", "reward_mean")  # preference_loss stats, logged as rm/*


@dataclass
class RewardConfig(ModelOptions, PreferenceDataOptions, LoopOptions, EarlyStoppingOptions, OptimOptions, LoRAOptions,
                   TrainPrecisionOptions, RunOptions):
    model: str = opt("runs/sft", "model to start from: the SFT model folder (default: rlhf sft's default output), "
                     "any local folder or hub id of a causal LM, or an existing reward model")
    bayes_accuracy: float = opt(0.0, "Bayes-optimal accuracy of the held-out labels; 0 = read 'bayes_accuracy' from "
                                "<data>.meta.json or <data stem>.meta.json if present")
    out: str = opt("runs/reward", "output folder: HF scalar-head model + tokenizer, reward_config.json, eval.json, "
                   "metrics.jsonl, checkpoint/, members/N/ for ensembles")
    epochs: float = opt(1.0, "passes over the training pairs; 1 as in InstructGPT and Stiennon et al. 2020 (a reward "
                        "model overfits its comparisons after about one epoch)")
    batch_size: int = opt(32, "preference pairs per micro-batch per process (whole rankings are packed together, so a "
                          "batch holds up to this many pairs, or one larger ranking)")
    lr: float = opt(1e-3, "peak learning rate (AdamW); suits the tiny demo models, use ~1e-5 for billion-parameter "
                    "models (InstructGPT: 9e-6)")
    use_margin: bool = opt(False, "subtract each pair's 'margin' (label strength) inside the loss (Llama 2). Off by "
                           "default: it helps separate strong preferences but the plain loss stays calibrated")
    ties: Literal["skip", "equal"] = opt("skip", "rows with \"tie\": true: skip (counted; Bradley-Terry has no tie "
                                         "outcome, and the export already drops ties) or equal (train toward equal "
                                         "reward: loss -1/2[log s(d) + log s(-d)])")
    center_coef: float = opt(0.0, "weight of the auxiliary centring term coef * mean(r)^2 (Eisenstein et al. 2023 use "
                             "0.01): keeps raw rewards near 0 (the pairwise loss ignores a shared offset)")
    ensemble: int = opt(1, "train N reward models with seeds seed..seed+N-1 (head init and data order); member 0 is "
                        "the main folder, member i is members/i/. Their disagreement flags reward hacking in PPO")
    head_std: float | None = opt(None, "std of a fresh scalar head's N(0, std) init; empty = 1/sqrt(hidden+1) "
                                 "(Stiennon et al. 2020). A model that already has a reward head keeps it")
    eval_every: int = opt(50, "evaluate on the held-out pairs every N optimiser steps (and at the start and the end)")
    early_stopping: bool = opt(False, "keep the weights of the held-out evaluation with the lowest eval/rm_loss and "
                               "restore them before the model is saved and normalised (a reward model overfits its "
                               "comparisons); needs held-out pairs")
    norm_samples: str = opt("", "`rlhf sample` JSONL ({prompt, responses, ended?}) of SFT samples on the prompt "
                            "distribution to normalise on; empty = the training pairs' distinct responses")
    lora_r: int = opt(0, "LoRA rank (peft); 0 = train all weights. The head is always trained in full and the "
                      "adapters are merged before saving, so plain transformers loads the result")
    seed: int = opt(0, "seed for the head init, the held-out split and the data order")
    shared_prefix: bool = opt(True, "in training, run the prompt the responses of a batch share once (a KV cache "
                              "reused by each response; same scores and gradients) when that saves >= 10% of the "
                              "tokens; off under gradient checkpointing, which drops the cache")
    pack_sequences: bool = opt(True, "padding-free forwards where no shared prefix is used (training batches "
                               "where it saves < 10%, evaluation): the real tokens in one row with restarting positions; "
                               "same scores to float rounding (rlhf.models.packing)")
    resume: bool = opt(False, "continue from out/checkpoint (and members/N/checkpoint) if present")

    def validate(self) -> None:
        super().validate()  # the shared groups: choices, model, data, loop, early stopping, optimiser, LoRA
        check(0 <= self.bayes_accuracy <= 1, "bayes_accuracy", f"{self.bayes_accuracy} is not a probability",
              "use a value in (0.5, 1], or 0 to read the export's meta file")
        check(self.center_coef >= 0, "center_coef", "must be >= 0", "use 0 (off) or a small value like 0.01")
        check(self.ensemble >= 1, "ensemble", "must be >= 1", "use 1 for a single reward model")
        check(self.head_std is None or self.head_std >= 0, "head_std", "must be >= 0", "leave it empty for the default")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: RewardConfig) -> Path:
    """Train cfg.ensemble reward models, evaluate them, normalise them; returns cfg.out (loads with
    `rlhf.models.reward.load_reward_model`, and member 0 with plain transformers)."""
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.precision import quantization_config

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg.device, cfg.dtype, cfg.grad_accum)  # bf16/fp16: autocast over fp32 master weights
    quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)  # refused now, not after reading the data, if it cannot apply
    if acc.is_main_process:
        (out / "summary.json").unlink(missing_ok=True)  # summary.json marks a finished stage; this run is not yet
        save_config(cfg, out / "config.yaml")

    # 1. tokenizer, then every distinct prompt+response tokenised once
    resumed_tok = cfg.resume and (out / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(out if resumed_tok else (cfg.tokenizer or cfg.model))
    if acc.is_main_process:
        tokenizer.save_pretrained(out)
    max_length = context_length(cfg)
    table = SequenceTable(tokenizer, max_length)

    # 2. preference pairs and the held-out set; skipped rows are counted and reported, never dropped silently
    pairs, skips = read_pairs(cfg.data, table, cfg.ties)
    train, evals, eval_source, eval_skips = split_heldout(cfg, pairs, table)
    report_skips(cfg, "reward", {"data": skips, "eval_data": eval_skips})
    eval_ties = sum(p.tie for p in evals)
    evals = [p for p in evals if not p.tie]  # held-out accuracy has no meaning for a tie label
    if not train:
        raise UserError(f"{cfg.data}: no training pairs left (after skips and the held-out split); check the file")
    if cfg.early_stopping and not evals:
        raise UserError(f"early_stopping needs held-out pairs and {cfg.data} gave none ({eval_source}); set "
                        "--eval_fraction, pass --eval_data, or set --early_stopping false")
    bayes = _bayes_accuracy(cfg)
    groups = len({p.group for p in train})
    say(f"[reward] {len(train)} training pairs in {groups} groups, {len(evals)} held-out pairs "
        f"({eval_source}), {len(table.seqs)} distinct responses, max_length {max_length}")

    # 3. train each ensemble member (member 0 in `out`, member i in out/members/i)
    t_start = time.perf_counter()
    steps = 0
    for member in range(cfg.ensemble):
        steps = train_member(cfg, member, tokenizer, table, train, evals, bayes, acc)

    # 4. score the held-out pairs and the normalisation set with each saved member (main process)
    acc.wait_for_everyone()
    if acc.is_main_process:
        summary = finalize(cfg, tokenizer, table, train, evals, bayes, acc.device)
        summary.update({"steps": steps, "train_pairs": len(train), "train_groups": groups, "eval_pairs": len(evals),
                        "eval_source": eval_source, "distinct_responses": len(table.seqs),
                        "skipped": {"data": dict(skips), "eval_data": dict(eval_skips)},
                        "eval_ties_excluded": eval_ties,
                        "train_s": time.perf_counter() - t_start})
        # a member finished by an earlier run without early stopping (then resumed with it) has no entry: None
        kept = [_read_json(member_dir(out, m) / "member.json").get("early_stopping") for m in range(cfg.ensemble)]
        if cfg.early_stopping and kept[0] is not None:
            summary["early_stopping"] = {**kept[0], **({"members": kept} if cfg.ensemble > 1 else {})}
        write_summary(out, summary, kind="reward")
        say(f"[reward] done: {_eval_line(summary)} -> {out}")
    acc.wait_for_everyone()
    return out


def train_member(cfg: RewardConfig, member: int, tokenizer: Any, table: SequenceTable, train: list[Pair],
                 evals: list[Pair], bayes: float | None, acc: Any) -> int:
    """Train one reward model into member_dir(out, member); returns its optimiser steps. A finished member
    (member.json present) is skipped on resume."""
    folder = member_dir(cfg.out, member)
    if cfg.resume and (folder / "member.json").exists():
        return int(_read_json(folder / "member.json")["steps"])
    if acc.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "member.json").unlink(missing_ok=True)
    seed = cfg.seed + member
    set_seed(seed)
    model, peft_model = build_model(cfg, tokenizer, seed)
    scorer = LastTokenScorer(model, packed=cfg.pack_sequences)
    tag = f"reward[{member}]" if cfg.ensemble > 1 else "reward"
    shared_prefix = cfg.shared_prefix and not cfg.gradient_checkpointing

    def loss_fn(scorer: Any, pairs: list[Pair]) -> tuple[torch.Tensor, dict[str, Any], int]:
        batch = collate_pairs(pairs, table, tokenizer.pad_token_id)
        layout = shared_prefix_layout(batch["input_ids"], batch["attention_mask"], batch["group"]
                                      ) if shared_prefix else None
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        layout = {k: v.to(acc.device) for k, v in layout.items()} if layout is not None else None
        rewards = scorer(batch["input_ids"], batch["attention_mask"], layout)  # (U,): one per response
        loss, stats = preference_loss(rewards, batch, cfg.use_margin, cfg.center_coef)
        return loss, stats, int(batch["attention_mask"].sum())

    def evaluate(scorer: Any) -> dict[str, float]:
        """Every process gets the same gathered scores, so every process makes the same early-stopping decision."""
        return eval_metrics(*score_pairs(scorer, evals, table, cfg.batch_size, tokenizer.pad_token_id, acc), bayes)

    # the step loop (rlhf.train.loop): group-packed micro-batches in a seeded order per epoch; an epoch is the
    # number of batches of this seed's first shuffle; early stopping keeps the lowest eval/rm_loss
    result = train_loop(
        acc, cfg, scorer, [p for p in model.parameters() if p.requires_grad], folder=folder, tag=tag, title=tag,
        prefix="rm", stat_keys=STAT_KEYS,
        batches_per_epoch=len(group_batches(train, cfg.batch_size, seed=epoch_seed(seed, 0))),
        batches=lambda start: iter_batches(train, cfg.batch_size, seed, acc.process_index, acc.num_processes, start),
        loss_fn=loss_fn, evaluate=evaluate if evals else None, describe=_eval_line,
        keep=BestHeldout(cfg.early_stopping_patience, "eval/rm_loss") if cfg.early_stopping else None,
        state_module=lambda s: s.model)
    scorer, step = result.model, result.step
    kept = {"early_stopping": result.early_stopping} if result.early_stopping is not None else {}

    # save an HF folder that plain transformers loads: adapters merged, pad id set, tokenizer next to it
    acc.wait_for_everyone()
    from rlhf.models.precision import cast_state_dict

    # under FSDP/ZeRO-3 the full state dict is gathered first (a collective: every process calls it)
    state = acc.get_state_dict(scorer) if peft_model is None else None
    if acc.is_main_process:
        final = acc.unwrap_model(scorer).model
        if peft_model is not None:
            final = peft_model.merge_and_unload()
            state = final.state_dict()
        else:  # the scorer's keys carry its `model.` prefix
            state = {k.removeprefix("model."): v for k, v in state.items()}
        final.config.pad_token_id = tokenizer.pad_token_id
        final.save_pretrained(folder, safe_serialization=True, state_dict=cast_state_dict(state, cfg.dtype))
        tokenizer.save_pretrained(folder)
        atomic_write_text(folder / "member.json", _json({"member": member, "seed": seed, "steps": step, **kept}))
    acc.free_memory()  # drop accelerate's references to this member's model and optimiser
    return step


def finalize(cfg: RewardConfig, tokenizer: Any, table: SequenceTable, train: list[Pair], evals: list[Pair],
             bayes: float | None, device: Any) -> dict[str, Any]:
    """Load each saved member, evaluate it on the held-out pairs, fit its normalisation (gain, bias) on the
    normalisation set, and write reward_config.json files and eval.json. Returns the summary's eval part."""
    from rlhf.models.loading import load_scalar_model

    norm_idx, source, norm_skips = normalisation_set(cfg, table, train)
    if norm_skips:
        say(f"[reward] normalisation set: skipped {sum(norm_skips.values())} responses: "
            + ", ".join(f"{n} x {r}" for r, n in norm_skips.items()))
    out = Path(cfg.out)
    specs, norms, member_evals, diffs = [], [], [], []
    for member in range(cfg.ensemble):
        folder = member_dir(out, member)
        scorer = LastTokenScorer(load_scalar_model(folder, dtype=cfg.dtype).to(device).eval())
        raw = score_sequences(scorer, norm_idx, table, cfg.batch_size, tokenizer.pad_token_id, device)
        mean, std = float(raw.mean()), float(raw.std(unbiased=False))
        if not std > 0:
            raise UserError(f"member {member}: every normalisation response got the same reward {mean}; the model "
                            "did not learn (check the data and --lr)")
        # lm-human-preferences: gain and bias so the reward has mean 0 and std 1 on SFT samples
        norm = {"gain": 1.0 / std, "bias": -mean / std, "raw_mean": mean, "raw_std": std, "n": len(raw),
                "source": source}
        norms.append(norm)
        specs.append({"path": os.path.relpath(folder, out), "gain": norm["gain"], "bias": norm["bias"]})
        member_cfg = {"format": FORMAT, **norm, **_scoring_notes(), "member": member}
        atomic_write_text(folder / REWARD_CONFIG, _json(member_cfg))
        if evals:
            chosen, rejected = score_pairs(scorer, evals, table, cfg.batch_size, tokenizer.pad_token_id, None)
            diffs.append((chosen, rejected))
            member_evals.append(eval_metrics(chosen, rejected, bayes))
    main_cfg = {"format": FORMAT, **norms[0], **_scoring_notes()}
    if cfg.ensemble > 1:
        main_cfg["members"] = specs
    atomic_write_text(out / REWARD_CONFIG, _json(main_cfg))

    summary: dict[str, Any] = {"normalisation": {**norms[0], "members": specs}}
    if evals:
        # an ensemble is evaluated on the mean of its members' raw scores (each on the Bradley-Terry scale)
        chosen = torch.stack([c for c, _ in diffs]).mean(0)
        rejected = torch.stack([r for _, r in diffs]).mean(0)
        final = eval_metrics(chosen, rejected, bayes)
        report = {**final, **eval_breakdown(chosen - rejected, evals), "eval_pairs": len(evals)}
        if cfg.ensemble > 1:
            report["members"] = member_evals
        atomic_write_text(out / "eval.json", _json(report))
        summary.update(final)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# loss and evaluation


def preference_loss(rewards: torch.Tensor, batch: dict[str, torch.Tensor], use_margin: bool = False,
                    center_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """rewards: (U,) one per distinct response of the batch; batch: `collate_pairs` output. Returns (loss, stats).

    loss = mean over the batch's pairs of the per-pair term (Bradley-Terry for preferences, times the pair's
           `weight` when the rows have one; the tie term for ties)
           + center_coef * mean(rewards)^2. stats: loss, accuracy, margin_mean (preference pairs), tie_loss (ties),
    reward_mean."""
    tie = batch["tie"]
    chosen, rejected = rewards[batch["chosen"]], rewards[batch["rejected"]]
    n = len(tie)
    loss = rewards.new_zeros(())
    stats: dict[str, torch.Tensor] = {}
    pref = ~tie
    if pref.any():
        margin = batch["margin"][pref] if use_margin else None
        # Ouyang et al. 2022 eq. 1; margin from Touvron et al. 2023 (Llama 2)
        bt, s = pairwise_loss(chosen[pref], rejected[pref], margin)
        if "weight" in batch and bool((batch["weight"][pref] != 1).any()):
            # per-pair weights (rows' "weight", `rlhf label export --weight reliability`): -mean(w * logsigmoid(d))
            d = chosen[pref] - rejected[pref] - (margin if margin is not None else 0.0)
            bt = -(batch["weight"][pref] * torch.nn.functional.logsigmoid(d)).mean()
        loss = loss + bt * (pref.sum() / n)
        stats.update(loss=bt.detach(), accuracy=s["accuracy"], margin_mean=s["margin_mean"])
    if tie.any():
        # a tie is a Bradley-Terry target of 1/2: -1/2 [log s(d) + log s(-d)], smallest at d = 0
        tl = 0.5 * (pairwise_loss(chosen[tie], rejected[tie])[0] + pairwise_loss(rejected[tie], chosen[tie])[0])
        loss = loss + tl * (tie.sum() / n)
        stats["tie_loss"] = tl.detach()
    if center_coef:
        loss = loss + center_coef * rewards.mean() ** 2  # Eisenstein et al. 2023: the BT loss ignores a shared offset
    stats["reward_mean"] = rewards.detach().mean()
    return loss, stats


@torch.no_grad()
def score_pairs(scorer: Any, pairs: list[Pair], table: SequenceTable, batch_size: int, pad_id: int, acc: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores), each (P,) float32 in pair order. With an Accelerator, the batches are
    shared across processes (each process makes the same number of forward calls, as DDP/FSDP need) and the
    results gathered; without one (acc None) `scorer` is a plain module run here."""
    from accelerate.utils import gather_object

    was_training = scorer.training
    scorer.eval()
    order = {id(p): i for i, p in enumerate(pairs)}
    batches = group_batches(pairs, batch_size)
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    mine = batches[rank::world]
    per_rank = math.ceil(len(batches) / world)
    device = acc.device if acc is not None else next(scorer.parameters()).device
    results = []
    for k in range(per_rank):
        batch = mine[k] if k < len(mine) else batches[0]  # equal call counts on every process
        b = collate_pairs(batch, table, pad_id)
        s = scorer(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu()
        if k < len(mine):
            results += [(order[id(p)], float(s[c]), float(s[r])) for p, c, r in zip(batch, b["chosen"], b["rejected"])]
    if world > 1:
        results = gather_object(results)
    if was_training:
        scorer.train()
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    for i, c, r in results:
        chosen[i], rejected[i] = c, r
    return chosen, rejected


def expected_calibration_error(p: torch.Tensor, y: torch.Tensor, n_bins: int = 10) -> float:
    """sum_b (n_b / N) |mean(p in b) - mean(y in b)| over `n_bins` equal-width bins of p in [0, 1] (p = 1 falls in
    the last bin). p: (N,) predicted probabilities, y: (N,) outcomes in {0, 1}."""
    bins = (p * n_bins).long().clamp(0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += float(sel.sum()) / len(p) * abs(float(p[sel].mean()) - float(y[sel].float().mean()))
    return total


def preference_ece(diff: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of sigmoid(r_A - r_B) as P(A preferred). Each pair is counted in both orders (A = chosen: outcome 1;
    A = rejected: outcome 0), so the bins are symmetric around 1/2; diff = r_chosen - r_rejected, (P,)."""
    p = torch.sigmoid(diff.float())
    return expected_calibration_error(torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)]),
                                      n_bins)


def eval_metrics(chosen: torch.Tensor, rejected: torch.Tensor, bayes: float | None) -> dict[str, float]:
    """Held-out metrics (names in docs/metrics.md); chosen, rejected: (P,) scores of the labelled-better/-worse side."""
    loss, stats = pairwise_loss(chosen, rejected)  # no margin: comparable across use_margin settings
    out = {"eval/rm_loss": float(loss), "eval/rm_accuracy": float(stats["accuracy"]),
           "eval/rm_ece": preference_ece(chosen - rejected), "eval/rm_pairs": len(chosen)}
    if bayes:
        out["eval/rm_bayes_accuracy"] = bayes
        out["eval/rm_accuracy_vs_bayes"] = out["eval/rm_accuracy"] / bayes
    return out


def eval_breakdown(diff: torch.Tensor, pairs: list[Pair]) -> dict[str, Any]:
    """Held-out accuracy by label strength (margin) and by labeler agreement: {"by_margin": {bucket: {pairs,
    accuracy}}, "by_agreement": ...}. Up to 8 distinct values are their own buckets; more are cut in quartiles."""
    correct = (diff > 0).tolist()
    return {"by_margin": _by_value([p.margin for p in pairs], correct),
            "by_agreement": _by_value([p.agreement for p in pairs], correct)}


def _by_value(values: list[float | None], correct: list[bool]) -> dict[str, dict[str, float]]:
    known = sorted({round(v, 3) for v in values if v is not None})
    if len(known) <= 8:
        def label(v: float) -> str:
            return f"{round(v, 3):g}"
    else:
        edges = [known[round(q * (len(known) - 1))] for q in (0.25, 0.5, 0.75)]

        def label(v: float) -> str:
            k = sum(v > e for e in edges)
            lo = known[0] if k == 0 else edges[k - 1]
            hi = edges[k] if k < 3 else known[-1]
            return f"{lo:g}-{hi:g}"
    buckets: dict[str, list[bool]] = {}
    for v, c in zip(values, correct):
        buckets.setdefault("none" if v is None else label(v), []).append(c)
    return {k: {"pairs": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(buckets.items())}


# ---------------------------------------------------------------------------------------------------------------
# normalisation


def normalisation_set(cfg: RewardConfig, table: SequenceTable, train: list[Pair]) -> tuple[list[int], str, Counter]:
    """Table rows to normalise on, a description of the source, and skips. `norm_samples` rows are `rlhf sample`
    output {prompt, responses: [...], ended?: [...]}; without it, the training pairs' distinct responses (SFT-like
    samples when the pairs were labelled on SFT samples, as in the pipeline)."""
    skips: Counter = Counter()
    if not cfg.norm_samples:
        rows = sorted({i for p in train for i in (p.chosen, p.rejected)})
        return rows, f"training pairs of {cfg.data} (chosen and rejected responses)", skips
    idx = []
    for lineno, row in iter_rows(cfg.norm_samples):
        where = row_where(cfg.norm_samples, lineno)
        if not isinstance(row.get("prompt"), (str, list)) or not isinstance(row.get("responses"), list):
            raise UserError(f"{where}: expected an `rlhf sample` row {{prompt: str or messages, responses: [str, ...]}}")
        ended = row.get("ended") or [True] * len(row["responses"])
        for response, end in zip(row["responses"], ended):
            if not isinstance(response, str):
                raise UserError(f"{where}: field 'responses' must hold strings")
            try:
                idx.append(table.add(row["prompt"], response, bool(end)))
            except Skip as e:
                skips[str(e)] += 1
    if len(idx) < 2:
        raise UserError(f"{cfg.norm_samples}: {len(idx)} usable responses; need at least 2 to normalise the reward")
    return idx, f"samples {cfg.norm_samples}", skips


@torch.no_grad()
def score_sequences(scorer: Any, idx: list[int], table: SequenceTable, batch_size: int, pad_id: int, device: Any
                    ) -> torch.Tensor:
    """(n,) float32 scores of table rows `idx` (sorted by length into batches of 2*batch_size to pad little)."""
    order = sorted(range(len(idx)), key=lambda k: len(table.seqs[idx[k]]))
    out = torch.zeros(len(idx))
    for s in range(0, len(order), 2 * batch_size):
        chunk = order[s: s + 2 * batch_size]
        ids, mask = right_pad([table.seqs[idx[k]] for k in chunk], pad_id)
        out[chunk] = scorer(ids.to(device), mask.to(device)).float().cpu()
    return out


# ---------------------------------------------------------------------------------------------------------------
# helpers


def member_dir(out: str | Path, member: int) -> Path:
    return Path(out) if member == 0 else Path(out) / "members" / str(member)


def build_model(cfg: RewardConfig, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """(HF scalar-head model, peft model or None). A fresh head is drawn N(0, head_std) under `seed`; with LoRA
    the returned HF model has the adapters injected (train through it) and the peft model merges them."""
    from rlhf.models.dropout import disable_dropout
    from rlhf.models.loading import default_head_std, load_scalar_model, scalar_head
    from rlhf.models.precision import quantization_config

    # trained weights are fp32 master weights (autocast does the low precision); a frozen LoRA base is in cfg.dtype
    model = load_scalar_model(cfg.model, dtype=cfg.dtype if cfg.lora_r else "fp32", pad_token_id=tokenizer.pad_token_id,
                              quantization=quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r))
    check_vocab(tokenizer, model)
    has_head = any(a.endswith("ForSequenceClassification") for a in (model.config.architectures or []))
    head = scalar_head(model)
    if cfg.head_std is not None or not has_head:
        std = default_head_std(model) if cfg.head_std is None else cfg.head_std
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.weight.normal_(0.0, std)  # Stiennon et al. 2020: small init, so early rewards are near 0
            if head.bias is not None:
                head.bias.zero_()
    # the backbone's dropout off (every family, float rate attributes too): training forwards are deterministic and
    # the shared-prefix scorer equals the plain forward; --lora_dropout, added below, stays the user's choice
    disable_dropout(model)
    head_name = next(n for n, m in model.named_modules() if m is head)
    model, peft_model = make_trainable(model, cfg, seed, exclude_modules=[head_name])
    if peft_model is not None:
        # the head is new: train it in full (what peft's modules_to_save does), and it is saved as a plain Linear;
        # in fp32 like every trained weight
        head.float().requires_grad_(True)
    return model, peft_model


def _bayes_accuracy(cfg: RewardConfig) -> float | None:
    """--bayes_accuracy, else 'bayes_accuracy' from the export's sidecar: <data>.meta.json (e.g.
    preferences.jsonl.meta.json) or <data stem>.meta.json (preferences.meta.json, what rlhf label export writes)."""
    if cfg.bayes_accuracy:
        return cfg.bayes_accuracy
    data = Path(cfg.data)
    for meta in (data.with_name(data.name + ".meta.json"), data.with_name(data.stem + ".meta.json")):
        if meta.exists():
            value = _read_json(meta).get("bayes_accuracy")
            if value is not None:
                if not isinstance(value, (int, float)) or not 0 < value <= 1:
                    raise UserError(f"{meta}: 'bayes_accuracy' must be a number in (0, 1], got {value!r}")
                return float(value)
    return None


def _eval_line(ev: dict[str, Any]) -> str:
    if "eval/rm_accuracy" not in ev:
        return "no held-out set"
    line = f"held-out accuracy {ev['eval/rm_accuracy']:.3f}, loss {ev['eval/rm_loss']:.3f}, ECE {ev['eval/rm_ece']:.3f}"
    if "eval/rm_accuracy_vs_bayes" in ev:
        line += f", {ev['eval/rm_accuracy_vs_bayes']:.1%} of the Bayes-optimal {ev['eval/rm_bayes_accuracy']:.3f}"
    return line


def _scoring_notes() -> dict[str, Any]:
    return {"score_at": "last real token (attention mask)", "append_eos": True,
            "encoding": "prompt with the tokenizer's special tokens + response without them + EOS if it ended"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
