"""The `accelerate.Accelerator` of a training stage, from its device, dtype and gradient accumulation options."""

from __future__ import annotations

from typing import Any


def make_accelerator(device: str = "auto", dtype: str = "fp32", grad_accum: int = 1) -> Any:
    """An Accelerator on `device` ('cpu' forces the CPU, and gloo for several CPU processes) whose mixed precision
    follows `dtype` (bf16/fp16: autocast over fp32 master weights; fp16 is CUDA only, with loss scaling), and that
    accumulates `grad_accum` micro-batches per optimiser step. Looked up in rlhf.models.precision at call time."""
    from rlhf.models import precision

    mixed = precision.training_mixed_precision(dtype, precision.resolve_device(device))
    return precision.make_training_accelerator(device, mixed, grad_accum)
