"""Shared plumbing for stages: output checks, summary.json; the training infrastructure lives in rlhf.train and is
re-exported here (seeding, accelerator, optimiser, checkpoints, RNG state, TrainStats, progress display)."""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from rlhf.artifacts import write_summary  # noqa: F401  (re-exported: the one summary.json writer, with kind)
from rlhf.errors import UserError
from rlhf.io import check_output
from rlhf.train.accelerator import make_accelerator  # noqa: F401  (re-exported: moved to rlhf.train)
from rlhf.train.checkpoint import (  # noqa: F401
    load_checkpoint_file,
    recover_checkpoint_dir,
    resume_training,
    save_checkpoint_dir,
    save_training_checkpoint,
)
from rlhf.train.optim import lr_factor, make_optimizer  # noqa: F401
from rlhf.train.progress import console, progress, say  # noqa: F401
from rlhf.train.seeds import rng_state, set_rng_state, set_seed  # noqa: F401
from rlhf.train.stats import TrainStats  # noqa: F401

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


def stage_done(out_dir: Path) -> bool:
    return (Path(out_dir) / "summary.json").exists()


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt


def check_tokenizers(tok: Any, others: dict[str, str], policy: str) -> None:
    """Responses are passed as token ids to every model: all must use the policy's vocabulary."""
    from rlhf.models.loading import load_tokenizer

    vocab = tok.get_vocab()
    for field_name, path in others.items():
        if path != policy and load_tokenizer(path).get_vocab() != vocab:
            raise UserError(f"config field '{field_name}': '{path}' uses a different tokenizer than the policy "
                            f"'{policy}'; compare models trained from the same SFT model (same token ids)")
