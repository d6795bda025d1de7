"""Small data and model folders for the architecture matrix and the option tests (no downloads)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from rlhf.io import write_jsonl
from tests.support.families import CORPUS

SENTENCES = CORPUS[:6]
PROMPTS = [" ".join(s.split()[:2]) for s in SENTENCES]


def write_data(d: Path) -> dict[str, Path]:
    """Plain-text SFT pairs, prompts and preference pairs (the chosen side is the corpus sentence)."""
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "pairs.jsonl", [{"prompt": p, "response": " " + " ".join(s.split()[2:])}
                                    for p, s in zip(PROMPTS, SENTENCES)] * 2)
    write_jsonl(d / "prompts.jsonl", [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    write_jsonl(d / "prefs.jsonl", [{"prompt": p, "chosen": " " + " ".join(s.split()[2:]), "rejected": " bad bad"}
                                    for p, s in zip(PROMPTS, SENTENCES)] * 2)
    return {"pairs": d / "pairs.jsonl", "prompts": d / "prompts.jsonl", "prefs": d / "prefs.jsonl"}


def rm_folder(base: Path, out: Path) -> Path:
    """A scalar-head model made from `base` with a small random head (enough for PPO mechanics)."""
    from rlhf.models.loading import load_scalar_model, load_tokenizer

    torch.manual_seed(0)
    rm = load_scalar_model(base, init_head_std=0.1)
    rm.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    return out


@contextlib.contextmanager
def record_forwards(kind: type):
    """Record (module, training, grad enabled, output dtype, weight dtype) for every forward of a `kind` module,
    whichever stage made the model (a global hook: nothing in the stage is patched)."""
    seen: list[tuple] = []

    def hook(module, _inputs, output):
        if isinstance(module, kind):
            out = output[0] if isinstance(output, tuple) else output
            w = getattr(module, "weight", None)
            seen.append((module, module.training, torch.is_grad_enabled(), out.dtype,
                         None if w is None else w.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def count_training_forwards(cls: type):
    """Count `cls.forward` runs in training mode with autograd on. Class-level, because module hooks do not fire
    when checkpointing replays a layer in the backward pass, while `forward` itself does run again."""
    count = [0]
    real = cls.forward

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            count[0] += 1
        return real(self, *args, **kwargs)

    cls.forward = forward
    try:
        yield count
    finally:
        cls.forward = real


@contextlib.contextmanager
def record_grad_norms(per_group: bool = False):
    """The gradient norm of each optimiser's parameters at the moment it steps (after any clipping): one global norm
    per step, or with per_group one norm per parameter group (PPO's policy and value groups share one optimiser)."""
    norms: list[float] = []

    def hook(optimizer, _args, _kwargs):
        groups = [g["params"] for g in optimizer.param_groups] if per_group else \
            [[p for g in optimizer.param_groups for p in g["params"]]]
        for params in groups:
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            if grads:
                norms.append(float(torch.stack(grads).norm()))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield norms
    finally:
        handle.remove()
