"""Supervised fine-tuning: train a causal LM on plain text (pre-training the tiny base) or on prompt/response pairs
(loss on response tokens only). Runs through `accelerate`, so the same command works on CPU, one GPU or several
processes (`accelerate launch -m rlhf.cli sft ...`).

    rlhf sft --model tiny:small --data runs/x/data/pretrain_train.jsonl --eval_data .../pretrain_val.jsonl --out runs/x/base
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
from rlhf.errors import UserError
from rlhf.models.chat import encode_chat_prompt, encode_chat_response
from rlhf.models.data_source import read_rows
from rlhf.stages.common import stage_outputs, write_summary
from rlhf.train.accelerator import make_accelerator
from rlhf.train.loop import train_loop
from rlhf.train.lora import add_lora, save_model
from rlhf.train.optim import lr_factor  # noqa: F401  (moved to rlhf.train.optim; re-exported for old imports)
from rlhf.train.progress import say
from rlhf.train.seeds import set_seed

IGNORE = -100  # label id that cross-entropy skips (prompt tokens and padding)


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
        write_summary(out, summary)
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
    from rlhf.models.precision import enable_gradient_checkpointing, prepare_quantized

    if cfg.model.startswith("tiny:"):
        from rlhf.models.registry import build_tiny_causal_lm

        model = build_tiny_causal_lm(cfg.model.split(":", 1)[1], tokenizer, seed=cfg.seed)
    else:
        from rlhf.models.loading import load_causal_lm

        model = load_causal_lm(cfg.model, cfg.dtype if cfg.lora_r else "fp32", quantization=quant)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer")
    model = prepare_quantized(model, cfg.load_in, cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not cfg.lora_r:
        return model, None
    peft_model = add_lora(model, cfg, cfg.seed, task_type="CAUSAL_LM")
    return peft_model.get_base_model(), peft_model


def _mode(row: dict[str, Any]) -> str:
    if "messages" in row or isinstance(row.get("prompt"), list):
        return "chat"
    return "prompt/response" if "prompt" in row else "text"


def tokenize_examples(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, source: str
                      ) -> list[tuple[list[int], list[int]]]:
    """Rows -> (input_ids, labels) with BOS (if the tokenizer adds one) and EOS; prompt tokens get label -100.

    Raises UserError naming file, line and field for a bad row or an example longer than `max_length`.
    """
    if not rows:
        raise UserError(f"{source}: no examples")
    mode = _mode(rows[0])
    eos = tokenizer.eos_token_id
    out = []
    for i, r in enumerate(rows, start=1):
        where = f"{source}: row {i}"
        if mode == "chat":
            prompt, response = _chat_row(r, where)
            ids_p = encode_chat_prompt(tokenizer, prompt, where)
            ids_r = encode_chat_response(tokenizer, prompt, response, where=where)
            ids, labels = ids_p + ids_r, [IGNORE] * len(ids_p) + ids_r
        elif mode == "prompt/response":
            if "response" not in r and "completion" in r:
                r = {**r, "response": r["completion"]}
            for key in ("prompt", "response"):
                if not isinstance(r.get(key), str):
                    raise UserError(f"{where}: field '{key}' missing or not a string (prompt/response format)")
            if not r["response"].strip():
                raise UserError(f"{where}: field 'response' is empty")
            prompt = tokenizer(r["prompt"])["input_ids"]
            response = tokenizer(r["response"], add_special_tokens=False)["input_ids"] + [eos]
            ids, labels = prompt + response, [IGNORE] * len(prompt) + response
        else:
            if not isinstance(r.get("text"), str) or not r["text"].strip():
                raise UserError(f"{where}: field 'text' missing or empty (text format: one {{'text': ...}} per line; "
                                "for pairs use {'prompt','response'})")
            ids = tokenizer(r["text"])["input_ids"] + [eos]
            labels = list(ids)
            if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
                labels[0] = IGNORE  # BOS is given, never predicted
        if len(ids) > max_length:
            raise UserError(f"{where}: {len(ids)} tokens, longer than max_length={max_length} (the model's "
                            "context or --max_length); shorten the example or raise --max_length")
        out.append((ids, labels))
    return out


def _chat_row(r: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, response messages): {'messages'} splits before the last assistant turn (TRL's
    conversational language modelling, loss on that turn); {'prompt', 'completion'|'response'} as given."""
    from rlhf.models.chat import check_messages

    if "messages" in r:
        msgs = check_messages(r["messages"], f"{where}: field 'messages'")
        last = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last <= 0:
            raise UserError(f"{where}: field 'messages' needs an assistant message after at least one other message")
        return msgs[:last], msgs[last:]
    response = r.get("completion", r.get("response"))
    if not isinstance(response, list):
        raise UserError(f"{where}: a conversational 'prompt' needs 'completion' (or 'response') as a list of messages")
    return check_messages(r["prompt"], f"{where}: field 'prompt'"), check_messages(response, f"{where}: field "
                                                                                   "'completion'")


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def iter_batches(examples: list, batch_size: int, seed: int, rank: int, world: int, pad_id: int, start: int = 0):
    """Endless micro-batches: each epoch a fresh seeded shuffle; rank r takes every world-th batch.
    Skips the first `start` micro-batches (exact resume)."""
    epoch, produced = 0, 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        chunks = chunks[rank::world]
        for idx in chunks:
            if produced >= start:
                yield collate([examples[i] for i in idx], pad_id)
            produced += 1
        epoch += 1


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
