"""Supervised fine-tuning: train a causal LM on plain text (pre-training the tiny base) or on prompt/response pairs
(loss on response tokens only). Runs through `accelerate`, so the same command works on CPU, one GPU or several
processes (`accelerate launch -m rlhf.cli sft ...`).

    rlhf sft --model tiny:small --data runs/x/data/pretrain_train.jsonl --eval_data .../pretrain_val.jsonl --out runs/x/base
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.artifacts import write_summary
from rlhf.config import (
    LoopOptions,
    LoRAOptions,
    ModelOptions,
    OptimOptions,
    RunOptions,
    TrainPrecisionOptions,
    check,
    opt,
    save_config,
)
from rlhf.models.data_source import read_rows
from rlhf.stages.common import stage_outputs
from rlhf.train.accelerator import make_accelerator
from rlhf.train.lm_data import (  # noqa: F401  (moved to rlhf.train.lm_data; sft.NAME still works)
    IGNORE,
    _chat_row,
    _mode,
    collate,
    iter_batches,
    tokenize_examples,
)
from rlhf.train.loop import train_loop
from rlhf.train.lora import check_vocab, make_trainable, save_model
from rlhf.train.optim import lr_factor  # noqa: F401  (moved to rlhf.train.optim; re-exported for old imports)
from rlhf.train.progress import say
from rlhf.train.seeds import set_seed


@dataclass
class SFTConfig(ModelOptions, LoopOptions, OptimOptions, LoRAOptions, TrainPrecisionOptions, RunOptions):
    model: str = opt("tiny:small", "hub id or local folder of a causal LM, or 'tiny:NAME' to build a tiny model "
                     "from config (tiny, small, medium)")
    tokenizer: str = opt("", "tokenizer folder or hub id; empty = the model's own (for 'tiny:' models: trained "
                         "on the training data)")
    tokenizer_vocab_size: int = opt(2048, "vocabulary size of a tokenizer trained for a 'tiny:' model")
    data: str = opt("", "training JSONL: rows {'text'} (plain LM), {'prompt','response'} (loss on response only; "
                    "'completion' also accepted), or conversational {'messages': [...]} / {'prompt': [...], "
                    "'completion': [...]} rendered with the chat template (loss on the last assistant turn)")
    eval_data: str = opt("", "validation JSONL in the same format (empty = no evaluation)")
    out: str = opt("runs/sft", "output folder (HF model + tokenizer, config.yaml, metrics.jsonl, checkpoint/)")
    max_length: int = opt(128, "longest tokenised example (incl. BOS/EOS); a longer one is an error, not cut")
    lr: float = opt(3e-3, "peak learning rate (AdamW)")
    warmup_steps: int = opt(20, "linear warm-up steps")
    eval_every: int = opt(100, "evaluate every N optimiser steps (and at the start and the end)")
    eval_batches: int = opt(0, "evaluate on at most N batches (0 = the whole eval set)")
    save_every: int = opt(200, "write checkpoint/ every N optimiser steps (0 = only at the end)")
    seed: int = opt(0, "seed for model init, data order and dropout")

    def validate(self) -> None:
        super().validate()  # the shared groups: choices, model, loop, optimiser, LoRA (rlhf.config)
        check(bool(self.data), "data", "no training data given", "pass --data FILE.jsonl")
        check(self.max_length >= 8, "max_length", f"{self.max_length} is too small", "use at least 8")
        check(self.eval_batches >= 0, "eval_batches", "must be >= 0", "use 0 for the whole eval set")


@stage_outputs(out="dir")  # checked before any work; a folder left holding only config.yaml is removed
def run(cfg: SFTConfig) -> Path:
    """Train, evaluate, checkpoint; save an HF model folder at cfg.out. Returns cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg.device, cfg.dtype, cfg.grad_accum)  # bf16/fp16: autocast over fp32 master weights
    quant = _quantization(cfg)  # refused here, before any loading, when it cannot apply
    set_seed(cfg.seed)
    if acc.is_main_process:
        save_config(cfg, out / "config.yaml")

    # 1. data and tokenizer
    train_rows = read_rows(cfg.data)  # JSONL, a save_to_disk folder or a hub dataset ORG/NAME[:split]
    eval_rows = read_rows(cfg.eval_data) if cfg.eval_data else []
    tokenizer = _tokenizer(cfg, train_rows)
    if acc.is_main_process:
        tokenizer.save_pretrained(out)  # saved first, so a resumed run uses exactly this tokenizer
    model, peft_model = _model(cfg, tokenizer, quant)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or cfg.max_length
    max_length = min(cfg.max_length, context)
    train = tokenize_examples(train_rows, tokenizer, max_length, cfg.data)
    evals = tokenize_examples(eval_rows, tokenizer, max_length, cfg.eval_data) if eval_rows else []
    mode = _mode(train_rows[0])
    pad_id = tokenizer.pad_token_id

    # 2. train on the step loop (rlhf.train.loop): next-token cross-entropy on the labelled tokens
    def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any], int]:
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     use_cache=False).loss
        return loss, {"loss": loss.detach()}, int(batch["attention_mask"].sum())

    t_start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    result = train_loop(
        acc, cfg, model, params, folder=out, tag="sft", title=f"sft ({mode})", prefix="sft", stat_keys=("loss",),
        batches_per_epoch=math.ceil(len(train) / cfg.batch_size),  # every micro-batch once, over all processes
        batches=lambda start: iter_batches(train, cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes,
                                           pad_id=pad_id, start=start),
        loss_fn=loss_fn, evaluate=(lambda m: evaluate(m, evals, cfg, pad_id, acc)) if evals else None,
        describe=lambda ev: f"eval loss {ev['eval/loss']:.3f}, perplexity {ev['eval/perplexity']:.1f}")
    model, step = result.model, result.step

    # 3. save the HF folder (loads with plain transformers) and mark the stage done
    acc.wait_for_everyone()
    summary: dict[str, Any] = {"steps": step, "mode": mode, "train_examples": len(train),
                               "train_s": time.perf_counter() - t_start}
    if evals:
        summary.update(evaluate(model, evals, cfg, pad_id, acc))
    save_model(acc, model, peft_model, out, cfg.dtype)
    if acc.is_main_process:
        tokenizer.save_pretrained(out)
        write_summary(out, summary, kind="sft")
    if "eval/perplexity" in summary:
        say(f"[sft] done: {step} steps, eval perplexity {summary['eval/perplexity']:.2f} -> {out}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _tokenizer(cfg: SFTConfig, rows: list[dict[str, Any]]) -> Any:
    from rlhf.models.loading import load_tokenizer

    if cfg.resume and (Path(cfg.out) / "tokenizer_config.json").exists():
        return load_tokenizer(cfg.out)
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.model.startswith("tiny:"):
        from rlhf.models.tokenizer import train_bpe_tokenizer

        texts = [r["text"] if "text" in r else f"{r.get('prompt', '')}{r.get('response', '')}" for r in rows]
        return train_bpe_tokenizer(texts, vocab_size=cfg.tokenizer_vocab_size)
    return load_tokenizer(cfg.model)


def _quantization(cfg: SFTConfig) -> Any:
    from rlhf.models.precision import quantization_config

    return quantization_config(cfg.load_in, cfg.dtype, cfg.lora_r)


def _model(cfg: SFTConfig, tokenizer: Any, quant: Any = None) -> tuple[Any, Any]:
    """(model to train, peft model or None). Trained weights are fp32 (master weights; autocast does the low
    precision); a LoRA base is frozen, so it is stored in cfg.dtype (or 4/8-bit)."""
    if cfg.model.startswith("tiny:"):
        from rlhf.models.registry import build_tiny_causal_lm

        model = build_tiny_causal_lm(cfg.model.split(":", 1)[1], tokenizer, seed=cfg.seed)
    else:
        from rlhf.models.loading import load_causal_lm

        model = load_causal_lm(cfg.model, cfg.dtype if cfg.lora_r else "fp32", quantization=quant)
        check_vocab(tokenizer, model)
    return make_trainable(model, cfg, cfg.seed, task_type="CAUSAL_LM")


@torch.no_grad()
def evaluate(model: Any, examples: list, cfg: SFTConfig, pad_id: int, acc: Any) -> dict[str, float]:
    """Token-weighted mean loss over the eval set (summed across processes) and its perplexity."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
    bs = cfg.batch_size
    chunks = [examples[i: i + bs] for i in range(0, len(examples), bs)][acc.process_index::acc.num_processes]
    if cfg.eval_batches:
        chunks = chunks[: cfg.eval_batches]
    for chunk in chunks:
        b = {k: v.to(acc.device) for k, v in collate(chunk, pad_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
        total += loss
        count += (b["labels"][:, 1:] != IGNORE).sum()
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    if was_training:
        model.train()
    mean = float(total / count.clamp(min=1))
    return {"eval/loss": mean, "eval/perplexity": math.exp(min(mean, 50.0))}
