"""Shared plumbing for stages: seeding, devices, checkpoints, RNG state, progress display."""

from __future__ import annotations

import functools
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlhf.errors import UserError
from rlhf.io import MetricsLogger, atomic_write_text, check_output, fsync_dir, truncate_metrics

console = Console(stderr=True)
C = TypeVar("C")

# What a stage writes before its real work (resolved config, tokenizer, an empty metrics file, TensorBoard's first
# event file): a folder holding only these has no results in it.
SETUP_FILES = ("config.yaml", "demo_config.yaml", "*.config.yaml", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt",
               "tokenizer.model", "events.out.tfevents.*", ".*.tmp")


def stage_outputs(resolve: Callable[[Any], Any] | None = None,
                  **outputs: Literal["dir", "file"]) -> Callable[[Callable[[C], Path]], Callable[[C], Path]]:
    """Decorator of a stage's `run(cfg)`. `outputs` names the config fields that are output paths, each a folder
    ('dir') or a file ('file'); `resolve(cfg)` fills fields the stage derives (eval's default out).

    Before any work every output is checked (rlhf.io.check_output: a one-line error for a file where a folder is
    expected or the reverse, or a path that cannot be written). If the stage then fails, a folder it created itself
    and that holds no results yet (only SETUP_FILES and empty files) is removed: a failed run leaves no folder
    holding only config.yaml, while a run that failed after logging keeps its metrics and checkpoint for
    `rlhf doctor` and --resume."""

    def wrap(run: Callable[[C], Path]) -> Callable[[C], Path]:
        @functools.wraps(run)
        def checked(cfg: C) -> Path:
            resolved = resolve(cfg) if resolve is not None else cfg
            created = []
            for name, kind in outputs.items():
                value = getattr(resolved, name)
                if not value:
                    continue
                path = check_output(value, kind, f"config field '{name}'")
                top = path if kind == "dir" else path.parent
                if top.exists():
                    continue
                while not top.parent.exists():
                    top = top.parent
                created.append(top)  # the highest folder this run will create
            try:
                return run(cfg)
            except BaseException:
                for folder in created:
                    if folder.is_dir() and not holds_results(folder):
                        shutil.rmtree(folder, ignore_errors=True)
                raise

        return checked

    return wrap


def holds_results(folder: Path) -> bool:
    """Whether `folder` holds anything but SETUP_FILES and empty files (see stage_outputs)."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and p.stat().st_size > 0 and not any(p.match(pattern) for pattern in SETUP_FILES):
            return True
    return False


def say(message: str) -> None:
    """Print a progress line; markup off, so '[ppo]' and file names with brackets print as written."""
    console.print(message, markup=False, highlight=False)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints, floats and lists only, so that a checkpoint holding it loads with
    `torch.load(weights_only=True)` (no pickled objects: see load_checkpoint_file). Restored exactly by set_rng_state."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [int(version), [int(x) for x in internal], gauss],
             "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_accelerator(device: str = "auto", mixed_precision: str = "no", grad_accum: int = 1) -> Any:
    """An `accelerate.Accelerator`; device 'cpu' forces CPU (and gloo for multi-process CPU runs)."""
    from accelerate import Accelerator

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu:
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # plain Accelerator() on a GPU-less box skips DDP sync
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)


def make_optimizer(cls: type[torch.optim.Optimizer], params: Any, **kw: Any) -> torch.optim.Optimizer:
    """torch.optim.Adam/AdamW with the fused kernel (the whole update in one op per dtype and device: same maths,
    ~2x faster steps on small models; transformers' Trainer default) where every parameter is on CPU or CUDA."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)
    return cls(groups, fused=fused or None, **kw)


def progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=transient, disable=os.environ.get("RLHF_NO_PROGRESS") == "1")


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
    """The start of a step-based training loop (SFT, reward): with `resume` and a checkpoint in folder/checkpoint,
    restore `module` (the unwrapped model), optimiser, scheduler and RNG, and drop the metrics rows logged after it;
    `extra` (a dict) is updated with the loop's own state saved by `save_training_checkpoint(extra=...)`.
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


class TrainStats:
    """The training statistics of a step loop (SFT, reward) between two log rows, on one or several processes.

    Each process `add`s its own micro-batches' stats (a key may be missing from a batch: a reward batch without a
    tie has no tie loss) and tokens; `row` sums them over every process (a collective: every process calls it at the
    same step), so a logged mean is over all processes' micro-batches since the last row, not over rank 0's alone.
    """

    def __init__(self, prefix: str, keys: tuple[str, ...]):
        self.prefix, self.keys = prefix, keys
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {k: 0.0 for k in self.keys}
        self.counts: dict[str, int] = {k: 0 for k in self.keys}
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, stats: dict[str, Any], tokens: int) -> None:
        for k, v in stats.items():
            self.sums[k] += float(v)
            self.counts[k] += 1
        self.tokens += tokens

    def row(self, acc: Any, step: int, micro: int, batches_per_epoch: int) -> dict[str, float]:
        """{step, epoch, PREFIX/KEY: mean over every process, throughput/tokens_per_s}; then starts a new window.

        `micro` is this process's micro-batch count and `batches_per_epoch` the micro-batches of one epoch of all
        processes together: each process takes every N-th batch, so N processes finish an epoch N times sooner."""
        local = [[self.sums[k], self.counts[k]] for k in self.keys] + [[self.tokens, 0]]
        totals = acc.reduce(torch.tensor(local, device=acc.device, dtype=torch.float64), "sum").tolist()
        row: dict[str, float] = {"step": step, "epoch": micro * acc.num_processes / max(1, batches_per_epoch)}
        row.update({f"{self.prefix}/{k}": s / n for k, (s, n) in zip(self.keys, totals) if n})
        row["throughput/tokens_per_s"] = totals[-1][0] / max(time.perf_counter() - self.t0, 1e-9)
        self.reset()
        return row


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """`summary.json` is written last: its presence marks the stage as complete."""
    return atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def stage_done(out_dir: Path) -> bool:
    return (Path(out_dir) / "summary.json").exists()


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt
