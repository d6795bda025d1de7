"""`rlhf doctor --env`: versions, devices, precision support and free memory, and warnings about known bad
combinations (optionally for one model's tokenizer). Exit status 1 when there is a warning, else 0.

    from rlhf.diagnose.env import env_report; env_report(model="Qwen/Qwen2.5-0.5B-Instruct")
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

PACKAGES = ("rlhf", "torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors",
            "bitsandbytes", "deepspeed", "vllm", "flash-attn")
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "HF_HOME", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
            "ACCELERATE_USE_CPU")


@dataclass
class EnvReport:
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # known bad combinations: exit status 1
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, key: str, value: Any) -> None:
        self.sections.setdefault(section, []).append((key, str(value)))


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(model: str | None = None) -> EnvReport:
    import torch

    r = EnvReport()
    r.add("system", "python", sys.version.split()[0])
    r.add("system", "platform", platform.platform())
    r.add("system", "cpu cores", os.cpu_count())
    mem = _meminfo()
    if mem:
        r.add("system", "memory", f"{mem[1] / 2**30:.1f} GiB free of {mem[0] / 2**30:.1f} GiB")
    for p in PACKAGES:
        r.add("packages", p, version(p) or "not installed")
    for v in ENV_VARS:
        if v in os.environ:
            r.add("environment", v, os.environ[v])

    # devices and precision
    cuda = torch.cuda.is_available()
    r.add("devices", "torch build", f"cuda {torch.version.cuda}" if torch.version.cuda else "CPU only")
    r.add("devices", "torch threads", torch.get_num_threads())
    if cuda:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            cap = torch.cuda.get_device_capability(i)
            r.add("devices", f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, compute {cap[0]}.{cap[1]}, "
                  f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
        r.add("precision", "bf16", "yes" if torch.cuda.is_bf16_supported() else "no (pre-Ampere GPU: use fp16)")
        r.add("precision", "fp16", "yes (with loss scaling)")
        r.add("precision", "tf32 matmul", "allowed" if torch.backends.cuda.matmul.allow_tf32 else "off")
    else:
        r.add("devices", "cuda", "no CUDA GPU visible: stages run on the CPU")
        r.add("precision", "bf16", "yes on CPU (autocast; slower than fp32 on most CPUs)")
        r.add("precision", "fp16", "no (needs a CUDA GPU)")

    # known bad combinations
    if not cuda and torch.version.cuda is None and shutil.which("nvidia-smi"):
        r.warnings.append("nvidia-smi is present but torch is a CPU-only build: install a CUDA build of torch")
    if not cuda:
        for pkg, what in (("bitsandbytes", "4/8-bit loading (--load_in)"), ("vllm", "the vLLM generation backend")):
            if version(pkg):
                r.notes.append(f"{pkg} is installed but no CUDA GPU is visible: {what} will be refused here")
        if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
            r.notes.append(f"torch uses {torch.get_num_threads()} CPU threads; on a busy or shared machine its "
                           "spin-waiting threads can be 10x slower: set OMP_NUM_THREADS=1 (or the free core count)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        r.notes.append("HF_HUB_OFFLINE=1: hub ids load only from the local cache; nothing is downloaded")
    if model:
        _check_model(r, model)
    return r


def _check_model(r: EnvReport, model: str) -> None:
    """Tokenizer traits that break code which does not pass (or read) the attention mask."""
    from transformers import AutoTokenizer

    from rlhf.errors import UserError
    from rlhf.models.gguf import resolve_model_source

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_source(model))  # a GGUF source: its converted folder
    except (OSError, ValueError, UserError) as e:
        r.warnings.append(f"could not load the tokenizer of '{model}': {str(e).splitlines()[0]}")
        return
    section = f"tokenizer of {model}"
    r.add(section, "class", type(tok).__name__)
    for name in ("bos", "eos", "pad"):
        token = getattr(tok, f"{name}_token")
        r.add(section, name, f"{token!r} (id {getattr(tok, f'{name}_token_id')})" if token is not None else "none")
    adds_bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    r.add(section, "adds BOS", "yes" if adds_bos else "no")
    r.add(section, "padding side", tok.padding_side)
    r.add(section, "chat template", "yes" if getattr(tok, "chat_template", None) else "no (plain-text prompts only)")
    if tok.eos_token is None:
        r.warnings.append(f"{model}: the tokenizer has no EOS token; responses could never end (set eos_token)")
    elif tok.pad_token is None:
        r.notes.append(f"{model}: no pad token; rlhf uses EOS as pad (and says so). Elsewhere, always pass the "
                       "attention mask")
    elif tok.pad_token_id == tok.eos_token_id:
        r.warnings.append(f"{model}: pad equals EOS ({tok.eos_token!r}). Without an attention mask, padding and the "
                          "real EOS cannot be told apart: code that finds the last token or masks labels by pad id "
                          "(stock *ForSequenceClassification pooling, collators that set labels = -100 at pad ids) "
                          "drops the EOS. rlhf masks by the attention mask; pass it everywhere else too")


def env_report(model: str | None = None, file: TextIO | None = None) -> int:
    """Print the report; return 1 if there is a warning, else 0."""
    out = file or sys.stdout
    r = collect(model)
    for section, items in r.sections.items():
        print(f"{section}:", file=out)
        width = max(len(k) for k, _ in items)
        for k, v in items:
            print(f"  {k:<{width}}  {v}", file=out)
    for n in r.notes:
        print(f"note: {n}", file=out)
    for w in r.warnings:
        print(f"WARNING: {w}", file=out)
    if not r.warnings:
        print("no known bad combinations found", file=out)
    return 1 if r.warnings else 0


def _meminfo() -> tuple[int, int] | None:
    """(total, available) bytes of host memory, from /proc/meminfo (Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(env_report(sys.argv[1] if len(sys.argv) > 1 else None))
