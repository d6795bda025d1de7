"""Precision, memory and device options, each either really applied or refused with the reason (never ignored).

`dtype` means the same in every stage (docs/recipes.md, "Precision and memory options"):
- fp32: fp32 weights, fp32 compute.
- bf16 / fp16 in a training stage (sft, reward, ppo): the trained weights stay fp32 ("master weights") and the
  forward runs under autocast in that dtype (accelerate's mixed precision; fp16 adds loss scaling, CUDA only).
  Frozen weights (PPO's reference and reward models, the base under LoRA, 4/8-bit bases) are stored in `dtype`.
  The saved model is written in `dtype`.
- bf16 / fp16 in an inference stage (sample, eval): the weights are loaded in that dtype.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from rlhf.errors import UserError

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda'; asking for cuda on a machine without one is an error, not a
    silent fall back to the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("config field 'device': cuda was asked for but no CUDA GPU is visible (torch "
                        f"{torch.__version__}, cuda build: {torch.version.cuda or 'none'}); use --device cpu or auto")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def check_dtype(dtype: str, device_type: str) -> None:
    """Refuse a dtype this device cannot compute in."""
    if dtype == "fp16" and device_type != "cuda":
        raise UserError("config field 'dtype': fp16 needs a CUDA GPU (CPU fp16 kernels are missing or very slow, and "
                        "fp16 training needs loss scaling on a GPU); use bf16 or fp32 on the CPU")
    if dtype == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("config field 'dtype': this GPU has no bf16 support (pre-Ampere); use fp16 or fp32")


def training_mixed_precision(dtype: str, device_type: str) -> str:
    """accelerate's `mixed_precision` for a training stage: fp32 -> 'no', bf16 -> 'bf16', fp16 -> 'fp16'
    (autocast over fp32 master weights; fp16 also scales the loss)."""
    check_dtype(dtype, device_type)
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[dtype]


def enable_gradient_checkpointing(model: Any, field: str = "gradient_checkpointing") -> None:
    """Recompute each layer's activations in the backward pass instead of storing them (less memory, ~30% more
    compute). Non-reentrant checkpointing, so frozen inputs (LoRA, a frozen embedding) still get gradients."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise UserError(f"config field '{field}': {type(target).__name__} does not support gradient checkpointing; "
                        "turn it off")
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # the name since transformers 5.x; the old one warns
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    target.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def _cuda_package_unavailable(package: str, gpu_only: str, install: str) -> str | None:
    """Why a CUDA-only package cannot run here (no GPU, or not installed), or None when it can."""
    if not torch.cuda.is_available():
        return f"no CUDA GPU is visible ({gpu_only})"
    if importlib.util.find_spec(package) is None:
        return f"the {package} package is not installed ({install})"
    return None


def bitsandbytes_unavailable() -> str | None:
    """Why 4/8-bit loading cannot work here, or None when it can."""
    return _cuda_package_unavailable("bitsandbytes", "bitsandbytes 4/8-bit kernels run on CUDA GPUs",
                                     "pip install 'rlhf[quant]' or pip install bitsandbytes")


def quantization_config(load_in: str, dtype: str, lora_r: int) -> Any:
    """A `BitsAndBytesConfig` for load_in '4bit' (QLoRA: NF4, double quantisation, compute in `dtype`) or '8bit';
    None for ''. 4/8-bit weights cannot be trained directly, so LoRA is required."""
    if not load_in:
        return None
    if load_in not in ("4bit", "8bit"):
        raise UserError(f"config field 'load_in': unknown '{load_in}'; use '', 4bit or 8bit")
    reason = bitsandbytes_unavailable()
    if reason:
        raise UserError(f"config field 'load_in': {load_in} loading cannot apply: {reason}; drop --load_in (and use "
                        "--dtype bf16 to halve memory) or run on a CUDA machine with bitsandbytes")
    if not lora_r:
        raise UserError(f"config field 'load_in': {load_in} weights cannot be trained directly; add --lora_r 16 "
                        "(QLoRA) or drop --load_in")
    from transformers import BitsAndBytesConfig

    from rlhf.models.loading import resolve_dtype

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=resolve_dtype(dtype if dtype != "fp32" else "bf16"))


def prepare_quantized(model: Any, load_in: str, gradient_checkpointing: bool) -> Any:
    """peft's k-bit preparation (norms in fp32, input grads for checkpointing) for a 4/8-bit base."""
    if not load_in:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def vllm_unavailable() -> str | None:
    """Why the vLLM generation backend (rlhf/models/vllm_backend.py) cannot run here, or None."""
    return _cuda_package_unavailable("vllm", "vLLM runs on GPUs only", "pip install vllm")


def check_generation_backend(backend: str, processes: int = 1) -> None:
    """Refuse a generation backend that cannot run here, before anything loads."""
    if backend == "transformers":
        return
    if backend != "vllm":
        raise UserError(f"config field 'generation_backend': unknown '{backend}'; use transformers or vllm")
    reason = vllm_unavailable()
    if reason is None and processes > 1:
        reason = (f"the vLLM backend runs colocated in a single process ({processes} were launched; "
                  "multi-GPU rollouts would need vLLM's external_launcher mode)")
    if reason:
        raise UserError(f"config field 'generation_backend': vllm cannot be used: {reason}; use "
                        "--generation_backend transformers (the default)")


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors of a state dict in the saving dtype (fp32 master weights -> a bf16 checkpoint)."""
    from rlhf.models.loading import resolve_dtype

    target = resolve_dtype(dtype)
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}


def make_training_accelerator(device: str, mixed_precision: str, grad_accum: int = 1) -> Any:
    """An `accelerate.Accelerator` for a training stage: device 'cpu' forces the CPU (and gloo for multi-process CPU
    runs), `mixed_precision` is the stage's (`training_mixed_precision`). accelerate keeps one state per process and
    refuses a different mixed precision later, yet stages run one after another in one process (the demo, tests)
    may each ask for their own: in a single process that state is safely started over."""
    import os

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu:
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # plain Accelerator() on a GPU-less box skips DDP sync
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)
