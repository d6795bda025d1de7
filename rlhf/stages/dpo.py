"""DPO: train the policy directly on preference pairs, with no reward model and no sampling (Rafailov et al. 2023).

    rlhf dpo --model runs/x/sft --data runs/x/preferences.jsonl --out runs/x/dpo
    rlhf eval --policy runs/x/dpo --reward runs/x/reward --gold demo     # baseline: the SFT model in its config

The preference file is the one `rlhf reward` reads, read the same way (rlhf.train.pairs: the same held-out split,
group-packed batches, skips counted). The policy starts as the SFT model and the reference is that same model frozen:
with --lora_r the policy's base with its adapters disabled, else the SFT weights. Each step, for a batch of pairs:
    h = log pi(y|x) - log pi_ref(y|x)                          summed over the response tokens (EOS included)
    loss = -log sigmoid(beta (h_chosen - h_rejected))          eq. 7, `rlhf.core.dpo_loss` on `pairwise_loss`
with cDPO's label smoothing as an option (Mitchell 2023). It runs on the step loop of SFT and the reward stage
(rlhf.train.loop: accumulation, clipping, schedule, held-out evaluation with early stopping, bit-identical resume).
Every option and its source: docs/algorithms.md#dpo. Every metric: docs/metrics.md.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
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
from rlhf.core import dpo_loss, logprobs_from_logits
from rlhf.errors import UserError
from rlhf.stages.common import stage_outputs
from rlhf.train.accelerator import make_accelerator
from rlhf.train.early_stopping import BestHeldout
from rlhf.train.loop import train_loop
from rlhf.train.lora import check_vocab, make_trainable, save_model
from rlhf.train.pairs import (
    Pair,
    SequenceTable,
    collate_pairs,
    context_length,
    epoch_seed,
    group_batches,
    iter_batches,
    read_pairs,
    report_skips,
    split_heldout,
)
from rlhf.train.progress import say
from rlhf.train.seeds import set_seed

STAT_KEYS = ("loss", "accuracy", "margin", "chosen_logratio", "rejected_logratio", "chosen_nll")  # logged as dpo/*


@dataclass
class DPOConfig(ModelOptions, PreferenceDataOptions, LoopOptions, EarlyStoppingOptions, OptimOptions, LoRAOptions,
                TrainPrecisionOptions, RunOptions):
    model: str = opt("runs/sft", "the SFT model folder (or hub id): the initial policy, and frozen, the reference")
    data: str = opt("", "preference JSONL, as for `rlhf reward`: {prompt, chosen, rejected, group_id?, split?, ...} "
                    "rows (rlhf label export), HH rows {chosen, rejected}, or TRL conversational rows; ties skipped")
    out: str = opt("runs/dpo", "output folder: the policy (HF format) + tokenizer, config.yaml, metrics.jsonl, "
                   "summary.json, checkpoint/")
    beta: float = opt(0.1, "beta: strength of the implicit KL constraint to the reference; the implicit reward is "
                      "beta * log(pi/pi_ref) (Rafailov et al. 2023 use 0.1; 0.5 for their summarisation task)")
    label_smoothing: float = opt(0.0, "cDPO: the probability eps that a label is flipped; loss = (1-eps) DPO + eps "
                                 "DPO of the flipped pair (Mitchell 2023); 0 = plain DPO")
    rpo_alpha: float = opt(0.0, "weight of an NLL (SFT) loss on the chosen responses added to the DPO loss, a "
                           "token mean (RPO, Pang et al. 2024; TRL's rpo_alpha, 1.0 in the paper): keeps the chosen "
                           "responses likely (against likelihood displacement); 0 = off")
    reference: Literal["precompute", "online"] = opt(
        "precompute", "reference log-probs: precompute (once, from the initial policy before training, in the batches "
        "of the first epoch: no reference model in memory and no reference forward per step) or online (a reference "
        "forward in every step: adapters disabled with LoRA, else a frozen copy of the policy)")
    epochs: float = opt(1.0, "passes over the training pairs (1: Rafailov et al. 2023; DPO overfits its pairs fast)")
    batch_size: int = opt(32, "preference pairs per micro-batch per process (whole rankings are packed together)")
    lr: float = opt(1e-4, "peak learning rate (AdamW); suits the tiny demo models; Rafailov et al. use 1e-6 with "
                    "billion-parameter models")
    eval_every: int = opt(20, "evaluate on the held-out pairs every N optimiser steps (and at the start and the end)")
    early_stopping: bool = opt(False, "keep the weights of the held-out evaluation with the lowest eval/dpo_loss and "
                               "restore them before saving; needs held-out pairs")
    seed: int = opt(0, "seed for the LoRA init, the held-out split and the data order")

    def validate(self) -> None:
        super().validate()  # the shared groups: choices, model, data, loop, early stopping, optimiser, LoRA
        check(self.beta > 0, "beta", f"{self.beta} must be > 0", "use e.g. 0.1 (Rafailov et al. 2023)")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", f"{self.label_smoothing} is outside [0, 0.5)",
              "use 0 (plain DPO) or a flip probability like 0.1")
        check(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0", "use 0 (off) or e.g. 1.0 (Pang et al. 2024)")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: DPOConfig) -> Path:
    """Train the policy with DPO; save an HF model folder at cfg.out (with config.yaml naming `model`, the SFT model
    `rlhf eval` compares with). Returns cfg.out."""
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.precision import quantization_config

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg.device, cfg.dtype, cfg.grad_accum)  # bf16/fp16: autocast over fp32 master weights
    quant = quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)  # refused now, before reading, if it cannot apply
    if acc.is_main_process:
        (out / "summary.json").unlink(missing_ok=True)  # summary.json marks a finished stage; this run is not yet
        save_config(cfg, out / "config.yaml")
    set_seed(cfg.seed)
    t_start = time.perf_counter()

    # 1. pairs, read as the reward stage reads them; the held-out split the same
    resumed_tok = cfg.resume and (out / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(out if resumed_tok else (cfg.tokenizer or cfg.model))
    if acc.is_main_process:
        tokenizer.save_pretrained(out)
    table = SequenceTable(tokenizer, context_length(cfg))
    pairs, skips = read_pairs(cfg.data, table, "skip")  # Bradley-Terry has no tie outcome: ties are skipped
    train, evals, eval_source, eval_skips = split_heldout(cfg, pairs, table)
    report_skips(cfg, "dpo", {"data": skips, "eval_data": eval_skips})
    if not train:
        raise UserError(f"{cfg.data}: no training pairs left (after skips and the held-out split); check the file")
    if cfg.early_stopping and not evals:
        raise UserError(f"early_stopping needs held-out pairs and {cfg.data} gave none ({eval_source}); set "
                        "--eval_fraction, pass --eval_data, or set --early_stopping false")
    say(f"[dpo] {len(train)} training pairs, {len(evals)} held-out pairs ({eval_source}), {len(table.seqs)} distinct "
        f"responses, beta {cfg.beta}, reference {cfg.reference}")

    # 2. the policy (the SFT model, LoRA optional) and the reference: precomputed log-probs or a model
    model, peft_model = build_policy(cfg, tokenizer, quant)
    pad_id = tokenizer.pad_token_id
    batch_seed = epoch_seed(cfg.seed, 0)
    train_batches = group_batches(train, cfg.batch_size, seed=batch_seed)  # the first epoch's batches
    eval_batches = group_batches(evals, cfg.batch_size)
    ref_model, ref_table = None, None
    if cfg.reference == "precompute":  # the initial policy is the reference: its log-probs in the batches it will see
        ref_table = table_logps(model, train_batches + eval_batches, table, pad_id, acc)
    elif peft_model is None:
        ref_model = copy.deepcopy(model).requires_grad_(False).eval().to(acc.device)

    def reference_logps(policy: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(U,) log pi_ref of each row of the batch."""
        if ref_table is not None:
            return ref_table[batch["seq"].cpu()].to(acc.device)
        with torch.no_grad():
            if ref_model is not None:
                return sequence_logps(ref_model, batch, acc)
            with peft_model.disable_adapter():  # LoRA: the reference is the base, adapters off
                return sequence_logps(acc.unwrap_model(policy), batch, acc)

    def loss_fn(policy: Any, pairs: list[Pair]) -> tuple[torch.Tensor, dict[str, Any], int]:
        batch = {k: v.to(acc.device) for k, v in collate_pairs(pairs, table, pad_id).items()}
        logp, ref = sequence_logps(policy, batch, acc), reference_logps(policy, batch)  # (U,) each
        c, r = batch["chosen"], batch["rejected"]
        loss, stats = dpo_loss(logp[c], logp[r], ref[c], ref[r], cfg.beta, cfg.label_smoothing)
        # RPO (Pang et al. 2024): + alpha * NLL of the chosen responses, a token mean over the batch (TRL's rpo_alpha)
        nll = -logp[c].sum() / response_mask(batch)[c].sum().clamp(min=1)
        stats = {"loss": loss.detach(), **stats, "chosen_nll": nll.detach()}  # dpo/loss: the DPO term alone
        if cfg.rpo_alpha:
            loss = loss + cfg.rpo_alpha * nll
        return loss, stats, int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(policy: Any) -> dict[str, float]:
        """DPO loss and accuracy of the held-out pairs (plain DPO: comparable across label_smoothing settings); every
        process gets the same gathered numbers, so every process makes the same early-stopping decision."""
        def score(b: dict[str, torch.Tensor]) -> list[list[float]]:
            logp, ref = sequence_logps(policy, b, acc), reference_logps(policy, b)
            c, r = b["chosen"], b["rejected"]
            return torch.stack([logp[c], logp[r], ref[c], ref[r]], 1).tolist()

        was_training = policy.training
        policy.eval()
        rows = torch.tensor(shared_forward(eval_batches, table, pad_id, acc, score), dtype=torch.float32)
        if was_training:
            policy.train()
        loss, stats = dpo_loss(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], cfg.beta)
        return {"eval/dpo_loss": float(loss), "eval/dpo_accuracy": float(stats["accuracy"]),
                "eval/dpo_margin": float(stats["margin"]), "eval/dpo_chosen_logratio": float(stats["chosen_logratio"]),
                "eval/dpo_rejected_logratio": float(stats["rejected_logratio"]), "eval/dpo_pairs": len(rows)}

    # 3. train on the step loop; early stopping keeps the lowest eval/dpo_loss
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    result = train_loop(
        acc, cfg, model, params, folder=out, tag="dpo", title="dpo", prefix="dpo", stat_keys=STAT_KEYS,
        batches_per_epoch=len(train_batches),
        batches=lambda start: iter_batches(train, cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes,
                                           start),
        loss_fn=loss_fn, evaluate=evaluate if evals else None, describe=_eval_line,
        keep=BestHeldout(cfg.early_stopping_patience, "eval/dpo_loss") if cfg.early_stopping else None)

    # 4. save the policy as an HF folder (adapters merged) and the summary that marks the stage done
    acc.wait_for_everyone()
    summary: dict[str, Any] = {"steps": result.step, "train_pairs": len(train),
                               "eval_pairs": len(evals), "eval_source": eval_source,
                               "distinct_responses": len(table.seqs), "reference": cfg.reference, "beta": cfg.beta,
                               "skipped": {"data": dict(skips), "eval_data": dict(eval_skips)}}
    if evals:
        summary.update(evaluate(result.model))
    if result.early_stopping is not None:
        summary["early_stopping"] = result.early_stopping
    save_model(acc, result.model, peft_model, out, cfg.dtype)
    summary["train_s"] = time.perf_counter() - t_start
    if acc.is_main_process:
        tokenizer.save_pretrained(out)
        write_summary(out, summary, kind="dpo", algorithm="dpo")
    say(f"[dpo] done: {result.step} steps, {_eval_line(summary) if evals else 'no held-out set'} -> {out}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# helpers


def build_policy(cfg: DPOConfig, tokenizer: Any, quant: Any) -> tuple[Any, Any]:
    """(model to train, peft model or None): the SFT model with dropout off (so that the policy's first forward equals
    the reference's: log-ratio exactly 0), fp32 master weights, LoRA adapters if cfg.lora_r (the base frozen in
    cfg.dtype or 4/8-bit)."""
    from rlhf.models.dropout import disable_dropout
    from rlhf.models.loading import load_causal_lm

    model = load_causal_lm(cfg.model, cfg.dtype if cfg.lora_r else "fp32", quantization=quant)
    check_vocab(tokenizer, model)
    disable_dropout(model)  # TRL's DPO does the same: dropout would make policy != reference at step 1
    return make_trainable(model, cfg, cfg.seed, task_type="CAUSAL_LM")


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], acc: Any) -> torch.Tensor:
    """(U,) float32: sum of log p(token | earlier tokens) over each row's response tokens (after its prompt_len
    prompt tokens, up to its last real token). Rows are right-padded; logits at position t predict token t+1."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with acc.autocast():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    logp = logprobs_from_logits(logits.float(), ids[:, 1:])  # (U, T-1)
    return (logp * response_mask(batch)).sum(-1)


def response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(U, T-1) bool: True where position t's logits predict a response token (t+1 >= prompt_len, t+1 real)."""
    ids = batch["input_ids"]
    pos = torch.arange(1, ids.shape[1], device=ids.device)
    return (pos[None, :] >= batch["prompt_len"][:, None]) & batch["attention_mask"][:, 1:].bool()


@torch.no_grad()
def table_logps(model: Any, batches: list[list[Pair]], table: SequenceTable, pad_id: int, acc: Any) -> torch.Tensor:
    """(len(table.seqs),) float32 log-probs of every sequence in `batches` under `model` (before training: the
    reference), each computed in the batch it is trained or evaluated in: the first step then sees the very numbers
    its own forward gives (log-ratio exactly 0) even where a kernel's rounding depends on the batch shape (on CPU in
    fp32 the values do not depend on the batching; GPU kernels may). Rows in no batch stay NaN."""
    model = model.to(acc.device)
    was_training = model.training
    model.eval()
    found = shared_forward(batches, table, pad_id, acc, lambda b: list(zip(b["seq"].tolist(),
                                                                           sequence_logps(model, b, acc).tolist())))
    if was_training:
        model.train()
    out = torch.full((len(table.seqs),), float("nan"))
    for i, v in found:
        out[int(i)] = v
    return out


def shared_forward(batches: list[list[Pair]], table: SequenceTable, pad_id: int, acc: Any,
                   fn: Callable[[dict[str, torch.Tensor]], list]) -> list:
    """fn(collated batch on the device) over `batches` shared out over the processes (every N-th each; each process
    makes the same number of calls, as DDP/FSDP need), the results of every batch concatenated in batch order on
    every process."""
    from accelerate.utils import gather_object

    rank, world = acc.process_index, acc.num_processes
    results: list = []
    for k in range(math.ceil(len(batches) / world)):
        i = k * world + rank
        batch = batches[i] if i < len(batches) else batches[0]  # equal call counts on every process
        out = fn({key: v.to(acc.device) for key, v in collate_pairs(batch, table, pad_id).items()})
        if i < len(batches):
            results.append((i, out))
    if world > 1:
        results = sorted(gather_object(results), key=lambda x: x[0])
    return [row for _, out in results for row in out]


def _eval_line(ev: dict[str, Any]) -> str:
    return (f"held-out DPO accuracy {ev['eval/dpo_accuracy']:.3f}, loss {ev['eval/dpo_loss']:.3f}, chosen log-ratio "
            f"{ev['eval/dpo_chosen_logratio']:+.3f}")
