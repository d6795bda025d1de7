"""The one step loop of the offline trainers (SFT, the reward model, DPO): epochs of micro-batches in a seeded order,
gradient accumulation, gradient clipping, the lr schedule, periodic held-out evaluation with early stopping and the
best weights kept, checkpoints with the data position for bit-identical resume, and TrainStats log rows.

A stage gives what differs: its model, its batches and its loss (`loss_fn`), its held-out evaluation; the loop
gives everything else. Every metric it logs is `<prefix>/loss` and the other `stat_keys`, `<prefix>/lr`,
`<prefix>/grad_norm`, `step`, `epoch`, `throughput/tokens_per_s` and the stage's `eval/*` (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.errors import UserError
from rlhf.train.checkpoint import resume_training, save_training_checkpoint
from rlhf.train.early_stopping import BestHeldout
from rlhf.train.optim import make_adamw
from rlhf.train.progress import progress, say
from rlhf.train.stats import TrainStats

LossFn = Callable[[Any, Any], "tuple[torch.Tensor, dict[str, Any], int]"]


@dataclass
class LoopResult:
    model: Any  # the prepared (accelerate-wrapped) model, trained; with early stopping: the best weights restored
    step: int  # optimiser steps done
    total_steps: int
    early_stopping: dict[str, Any] | None  # {best_step, best_loss, last_step, stopped_early, patience} or None


def total_steps(cfg: Any, batches_per_epoch: int, num_processes: int) -> int:
    """max_steps, or epochs x the optimiser steps of one epoch (every micro-batch once, shared out over processes)."""
    steps_per_epoch = math.ceil(batches_per_epoch / (cfg.grad_accum * num_processes))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def train_loop(acc: Any, cfg: Any, model: torch.nn.Module, params: list[torch.nn.Parameter], *, folder: Path,
               tag: str, title: str, prefix: str, stat_keys: tuple[str, ...], batches_per_epoch: int,
               batches: Callable[[int], Iterator[Any]], loss_fn: LossFn,
               evaluate: Callable[[Any], dict[str, float]] | None = None,
               describe: Callable[[dict[str, float]], str] = lambda ev: "",
               keep: BestHeldout | None = None,
               state_module: Callable[[Any], torch.nn.Module] = lambda m: m) -> LoopResult:
    """Train `model` (not yet prepared) for cfg's steps; returns the LoopResult.

    cfg: a LoopOptions + OptimOptions config (epochs, max_steps, grad_accum, lr, weight_decay, adam_eps, schedule,
    warmup_steps, max_grad_norm, eval_every, log_every, save_every, resume). params: the trained parameters (AdamW's).
    batches(start): endless micro-batches of this process, skipping the first `start` (the data position on resume).
    loss_fn(model, batch) -> (loss, stats of the batch for TrainStats, tokens). evaluate(model) -> held-out metrics
    (every process calls it and must get the same numbers); None = no held-out set. keep: early stopping on
    keep.metric. state_module(unwrapped model) -> the module whose state_dict is checkpointed and kept."""
    steps = total_steps(cfg, batches_per_epoch, acc.num_processes)
    opt, sched = make_adamw(params, cfg, steps)
    model, opt = acc.prepare(model, opt)
    extra: dict[str, Any] = {}
    step, micro, metrics = resume_training(acc, folder, state_module(acc.unwrap_model(model)), opt, sched, cfg.resume,
                                           tag, extra)
    if keep is not None and "best_heldout" in extra:
        keep.load_state_dict(extra["best_heldout"])

    def log(row: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.log(row)

    def evaluate_now() -> tuple[dict[str, float], bool]:
        """Held-out metrics (logged) and whether early stopping ends training here (the same on every process)."""
        ev = evaluate(model)
        stop = False
        if keep is not None:
            stop = keep.update(state_module(acc.unwrap_model(model)), step, ev[keep.metric])
            best_loss, best_step = keep.names()
            ev.update({best_loss: keep.best_loss, best_step: keep.best_step})
        log({"step": step, **ev})
        return ev, stop

    if step == 0 and evaluate is not None:
        ev, _ = evaluate_now()
        say(f"[{tag}] untrained: {describe(ev)}")

    # micro-batches in the stage's seeded order; `micro` counts them for exact resume
    model.train()
    stats = TrainStats(prefix, stat_keys)  # means over every process's micro-batches since the last row
    loss_key = f"{prefix}/loss"
    with progress() as bar:
        task = bar.add_task(title, total=steps, completed=step, info="")
        stream = batches(micro)
        while step < steps:
            batch = next(stream)
            micro += 1
            with acc.accumulate(model):
                loss, batch_stats, tokens = loss_fn(model, batch)
                acc.backward(loss)
                stats.add(batch_stats, tokens)
                grad_norm = None
                if acc.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            step += 1
            if step % cfg.log_every == 0 or step == steps:
                row = {**stats.row(acc, step, micro, batches_per_epoch), f"{prefix}/lr": sched.get_last_lr()[0]}
                if grad_norm is not None:
                    row[f"{prefix}/grad_norm"] = grad_norm
                if loss_key in row and not math.isfinite(row[loss_key]):
                    raise UserError(f"[{tag}] training loss became {row[loss_key]} at step {step}; lower --lr (now "
                                    f"{cfg.lr}) or check the data")
                log(row)
                bar.update(task, info=f"loss {row.get(loss_key, float('nan')):.3f}")
            if evaluate is not None and (step % cfg.eval_every == 0 or step == steps):
                ev, stop = evaluate_now()
                bar.update(task, info=describe(ev))
                if stop:
                    say(f"[{tag}] early stopping at step {step}: no lower held-out loss in {keep.patience} "
                        f"evaluations since step {keep.best_step}")
                    break
            if cfg.save_every and step % cfg.save_every == 0 and step < steps:
                save_training_checkpoint(acc, folder, state_module(acc.unwrap_model(model)), opt, sched, step, micro,
                                         {"best_heldout": keep.state_dict()} if keep is not None else None)
            bar.update(task, completed=step)
    kept = None
    if keep is not None:
        keep.restore(state_module(acc.unwrap_model(model)))
        kept = {"best_step": keep.best_step, "best_loss": keep.best_loss, "last_step": step,
                "stopped_early": step < steps, "patience": keep.patience}
        say(f"[{tag}] kept the weights of step {keep.best_step} (lowest held-out loss {keep.best_loss:.4f})")
    if metrics is not None:
        metrics.close()
    return LoopResult(model, step, steps, kept)
