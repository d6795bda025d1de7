"""Load causal LMs, scalar-head models and tokenizers by hub id or local path with the `transformers` Auto classes."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from rlhf.errors import UserError

log = logging.getLogger(__name__)
transformers.utils.logging.disable_progress_bar()  # no per-load "Loading weights" bars in our logs

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use one of fp32, bf16, fp16")
    return DTYPES[name]


def _check_source(name_or_path: str | Path) -> str:
    """A GGUF source (a .gguf file, a folder with one, a shipped model's name: rlhf.models.gguf) becomes its
    converted HF folder; a path that looks local must exist; anything else is passed on as a hub id."""
    from rlhf.models.gguf import resolve_model_source

    s = resolve_model_source(name_or_path)
    p = Path(s)
    looks_local = s.startswith((".", "/", "~")) or p.exists() or s.count("/") > 1
    if looks_local and not p.exists():
        raise UserError(f"model path '{s}' does not exist; give an existing folder or a hub id like 'org/name'")
    if p.exists() and p.is_dir() and not (p / "config.json").exists() and not (p / "tokenizer_config.json").exists():
        raise UserError(f"'{s}' is a folder but has no config.json: it is not a saved Hugging Face model")
    return s


def _friendly_load_error(what: str, source: str, e: Exception) -> UserError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    hint = ""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        hint = " (HF_HUB_OFFLINE is set: only models already in the Hugging Face cache load; download it first or " \
               "pass a local folder)"
    elif "offline" in msg.lower() or "connect" in msg.lower() or "resolve" in msg.lower():
        hint = " (no network: save the model locally and pass its folder, or set HF_HUB_OFFLINE=1 with a cached copy)"
    return UserError(f"could not load {what} from '{source}': {msg}{hint}")


def load_tokenizer(name_or_path: str | Path, padding_side: str = "right") -> Any:
    """Load a tokenizer; if it has no pad token, use EOS as pad (and say so), as most causal LMs need."""
    source = _check_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _friendly_load_error("a tokenizer", source, e) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer of '{source}' has neither a pad nor an EOS token; add a pad token to it")
        log.warning("tokenizer of '%s' has no pad token; using EOS (%r) as pad", source, tok.eos_token)
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise UserError(f"tokenizer of '{source}' has no EOS token; responses could never end. Set eos_token.")
    tok.padding_side = padding_side
    return tok


def _quantized(quantization: Any) -> dict[str, Any]:
    """from_pretrained kwargs for a bitsandbytes config (see rlhf.models.precision.quantization_config): 4/8-bit
    weights are placed on this process's GPU as they load."""
    if quantization is None:
        return {}
    return {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}


def load_causal_lm(name_or_path: str | Path, dtype: str = "fp32", quantization: Any = None) -> PreTrainedModel:
    source = _check_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype), **_quantized(quantization))
    except (OSError, ValueError) as e:
        raise _friendly_load_error("a causal LM", source, e) from None
    return model


def load_scalar_model(name_or_path: str | Path, dtype: str = "fp32", init_head_std: float | None = None,
                      pad_token_id: int | None = None, quantization: Any = None) -> PreTrainedModel:
    """A model with a scalar head (num_labels=1): a saved reward/value model, or a causal LM whose LM head is
    replaced by a fresh scalar head. `init_head_std`: re-initialise the head N(0, std) (None keeps it;
    0.0 zeroes it, the usual value-head start)."""
    source = _check_source(name_or_path)
    # Loading a causal LM here is expected to drop its LM head and add a fresh scalar head: transformers' load
    # report would print that as a warning table on every load, so it is silenced and said once, plainly, below.
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=resolve_dtype(dtype),
                                                                   output_loading_info=True, **_quantized(quantization))
        model, info = model
    except (OSError, ValueError) as e:
        raise _friendly_load_error("a scalar-head model", source, e) from None
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    head = [k for k in missing if k.split(".")[0] in ("score", "classifier", "v_head")]
    if head:
        log.info("%s: new scalar head (%s) initialised; the backbone comes from the checkpoint", source, ", ".join(head))
    if len(head) < len(missing):  # backbone weights missing: a real mismatch, never silent
        log.warning("%s: these weights were not in the checkpoint and are randomly initialised: %s", source,
                    ", ".join(k for k in missing if k not in head))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if init_head_std is not None:
        head = scalar_head(model)
        with torch.no_grad():
            if init_head_std == 0.0:
                head.weight.zero_()
            else:
                head.weight.normal_(0.0, init_head_std)
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()
    return model


def default_head_std(model: PreTrainedModel) -> float:
    """1/sqrt(hidden+1): the reward-head init of Stiennon et al. 2020 (summarize-from-feedback)."""
    hidden = model.config.get_text_config().hidden_size
    return 1.0 / math.sqrt(hidden + 1)


def scalar_head(model: PreTrainedModel) -> torch.nn.Linear:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), torch.nn.Linear):
            return head.out_proj
    raise UserError(f"{type(model).__name__} has no scalar head named score/classifier; use a model class whose "
                    "sequence-classification head is a Linear layer")
