"""Checkpoints: atomic save of a folder, recovery after a crash between its renames, a loader that refuses pickled
objects, and the resume/save pair of a step loop (model, optimiser, scheduler, RNG, data position, loop state)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf.errors import UserError
from rlhf.io import MetricsLogger, fsync_dir, truncate_metrics
from rlhf.train.progress import say
from rlhf.train.seeds import rng_state, set_rng_state


def save_checkpoint_dir(build: Any, final_dir: Path) -> Path:
    """Atomically replace `final_dir`: `build(tmp_dir)` writes everything into a temporary sibling, which is
    then renamed into place (the old checkpoint stays valid until the rename)."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    build(tmp)
    for p in tmp.iterdir():  # flush file contents before the rename makes them visible
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    old = final_dir.with_name(f".{final_dir.name}.old")
    if final_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    fsync_dir(final_dir.parent)
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def recover_checkpoint_dir(final_dir: Path) -> Path | None:
    """The checkpoint to resume from: `final_dir`, or its `.old` twin if a crash hit between the two renames."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        return final_dir
    old = final_dir.with_name(f".{final_dir.name}.old")
    return old if old.exists() else None


def load_checkpoint_file(path: Path) -> Any:
    """`torch.load` of a file in a run's checkpoint/ with weights_only=True: tensors and plain containers only. A
    pickled object would run code as whoever resumes (a planted or foreign file), so anything else is refused with a
    one-line error, as is a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing from the checkpoint (an incomplete or foreign checkpoint folder); delete "
                        f"{path.parent} to start over, or run without --resume")
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"{path}: refused to load: not a checkpoint file written by this version of rlhf (it holds "
                        f"objects other than tensors and plain values, which could run code, or it is damaged: "
                        f"{reason}); delete {path.parent} to start over, or run without --resume") from None


def resume_training(acc: Any, folder: Path, module: torch.nn.Module, optimizer: Any, scheduler: Any, resume: bool,
                    tag: str, extra: dict[str, Any] | None = None) -> tuple[int, int, MetricsLogger | None]:
    """The start of a step-based training loop (SFT, reward, DPO): with `resume` and a checkpoint in
    folder/checkpoint, restore `module` (the unwrapped model), optimiser, scheduler and RNG, and drop the metrics rows
    logged after it; `extra` (a dict) is updated with the loop's own state saved by `save_training_checkpoint(extra=...)`.
    Returns (step, micro-batch, folder/metrics.jsonl's logger on the main process, else None)."""
    step, micro = 0, 0
    ckpt = recover_checkpoint_dir(folder / "checkpoint") if resume else None
    if ckpt is not None:
        state = load_checkpoint_file(ckpt / "trainer_state.pt")
        module.load_state_dict(load_checkpoint_file(ckpt / "model.pt"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, micro = state["step"], state["micro"]
        if extra is not None:
            extra.update(state.get("extra") or {})
        say(f"[{tag}] resumed from {ckpt} at step {step}")
        if acc.is_main_process:
            truncate_metrics(folder / "metrics.jsonl", step)
    metrics = MetricsLogger(folder / "metrics.jsonl", append=ckpt is not None) if acc.is_main_process else None
    return step, micro, metrics


def save_training_checkpoint(acc: Any, folder: Path, module: torch.nn.Module, optimizer: Any, scheduler: Any,
                             step: int, micro: int, extra: dict[str, Any] | None = None) -> None:
    """What `resume_training` restores, written atomically to folder/checkpoint by the main process. `extra`: the
    loop's own state (tensors and plain values only, so that it loads with weights_only=True)."""
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return

    def build(tmp: Path) -> None:
        torch.save(module.state_dict(), tmp / "model.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "step": step, "micro": micro, "extra": extra or {}}, tmp / "trainer_state.pt")

    save_checkpoint_dir(build, folder / "checkpoint")
