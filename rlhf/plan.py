"""Recipes and the dry run: load a GPU recipe (configs/recipes/*.yaml), check it, and print the plan with a
per-GPU memory estimate for every stage, without loading or downloading a model.

    python -m rlhf.plan configs/recipes/qwen2.5-0.5b-hh-24gb.yaml     (what `--dry-run` prints)

A recipe is one YAML file: a `recipe:` block (model, GPUs, launcher, architecture) and one section per stage
(`sft:`, `sample:`, `reward:`, `ppo:`, `eval:`) holding that stage's config, so `rlhf sft --config RECIPE` runs the
stage as planned. The architecture (sizes, vocabulary) comes from the model's config.json when it is on this
machine (a local folder or the Hugging Face cache; never fetched), else from the recipe's `architecture:` block,
else from KNOWN_ARCHITECTURES. The memory model is in docs/recipes.md.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import build_config, load_yaml
from rlhf.errors import ConfigError, UserError

GIB = 1024**3
# bytes per parameter of a trained weight under mixed precision with Adam: fp32 weight 4 + fp32 gradient 4 + two
# fp32 moments 8 (the bf16 autocast copies are transient)
TRAINED_BYTES = 16
STORED_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.55}  # 4bit: NF4 + scales
CUDA_OVERHEAD_GIB = 1.5  # CUDA context, allocator fragmentation, kernels' workspaces

ARCH_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
# config.json values of the models the recipes name, for planning without the file
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                       max_position_embeddings=32768, tie_word_embeddings=True),
    "meta-llama/Llama-3.1-8B-Instruct": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                             max_position_embeddings=131072, tie_word_embeddings=False),
    "Qwen/Qwen2.5-7B-Instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                     max_position_embeddings=32768, tie_word_embeddings=False),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                               num_attention_heads=32, num_key_value_heads=8, vocab_size=32768,
                                               max_position_embeddings=32768, tie_word_embeddings=False),
}
# the recipe sections: the stages of rlhf.stages.registry that the memory model below covers
STAGES = ("sft", "sample", "reward", "ppo", "eval")


@dataclass
class Arch:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block (Llama/Qwen/Mistral layout: q, k, v, o, gate, up,
        down); GPT-2/NeoX differ by biases and a 2-matrix MLP, within a few percent at these sizes."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, \
            self.num_key_value_heads * self.head_dim, self.intermediate_size
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def params(self) -> int:
        per_layer = self.layer_params()
        embed = self.vocab_size * self.hidden_size
        return embed * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * per_layer + self.hidden_size

    def reward_params(self) -> int:
        """A scalar-head model's: no LM head (a tied one is the embedding, which stays)."""
        return self.params() - (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    def layer_params(self) -> int:
        """One decoder block's (its linears and two norms)."""
        return sum(a * b for a, b in self.layer_linears()) + 2 * self.hidden_size

    def lora_params(self, r: int) -> int:
        return self.num_hidden_layers * sum(r * (a + b) for a, b in self.layer_linears())


@dataclass
class Recipe:
    path: Path
    name: str
    model: str
    gpus: int
    gpu_memory_gib: float
    launcher: str
    arch: Arch
    configs: dict[str, Any]  # stage -> its config dataclass (validated)
    notes: list[str]


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe: every stage section builds its config (unknown keys and bad values are
    ConfigErrors naming the field), the stages chain (ppo.policy = sft.out, ...), and the shapes fit."""
    path = Path(path)
    data = load_yaml(path)
    meta = data.get("recipe")
    if not isinstance(meta, dict):
        raise UserError(f"{path}: a recipe needs a 'recipe:' block (model, gpus, gpu_memory_gb, launcher)")
    for key in ("model", "gpus", "gpu_memory_gb"):
        if key not in meta:
            raise ConfigError(f"{path} [recipe]: field '{key}' is missing")
    unknown = set(data) - {"recipe", *STAGES}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; use recipe, {', '.join(STAGES)}")
    configs = {}
    for stage in STAGES:
        if stage in data:
            if not isinstance(data[stage], dict):
                raise ConfigError(f"{path} [{stage}]: expected a mapping of config fields")
            configs[stage] = build_config(_config_class(stage), data[stage], f"{path} [{stage}]")
    recipe = Recipe(path, str(meta.get("name", path.stem)), str(meta["model"]), int(meta["gpus"]),
                    float(meta["gpu_memory_gb"]), str(meta.get("launcher", "rlhf")),
                    architecture(str(meta["model"]), meta.get("architecture"), path), configs,
                    [str(n) for n in meta.get("notes", [])])
    check_recipe(recipe)
    return recipe


def _config_class(stage: str) -> type:
    from rlhf.stages.registry import config_class

    return config_class(stage)


def architecture(model: str, block: dict[str, Any] | None, where: Path | str = "recipe") -> Arch:
    """The model's sizes: its config.json if it is on this machine (never downloaded), else the recipe's
    architecture block, else KNOWN_ARCHITECTURES."""
    values, source = None, ""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model, local_files_only=True).get_text_config()
        values = {k: getattr(cfg, k, None) for k in ARCH_FIELDS}
        values["num_key_value_heads"] = values["num_key_value_heads"] or values["num_attention_heads"]
        values["tie_word_embeddings"] = bool(getattr(cfg, "tie_word_embeddings", False))
        source = f"config.json of {model}"
    except (OSError, ValueError):
        pass
    if values is None and block:
        values, source = dict(block), f"the architecture block of {where}"
    if values is None and model in KNOWN_ARCHITECTURES:
        values, source = dict(KNOWN_ARCHITECTURES[model]), "rlhf.plan.KNOWN_ARCHITECTURES"
    if values is None:
        raise UserError(f"{where}: the size of '{model}' is unknown here (no local config.json, no download in a dry "
                        f"run); add an 'architecture:' block with {', '.join(ARCH_FIELDS)} under 'recipe:'")
    missing = [k for k in ARCH_FIELDS if values.get(k) is None]
    if missing:
        raise ConfigError(f"{where}: architecture is missing {', '.join(missing)}")
    extra = set(values) - set(ARCH_FIELDS)
    if extra:
        raise ConfigError(f"{where}: unknown architecture field(s) {sorted(extra)}; use {', '.join(ARCH_FIELDS)}")
    arch = Arch(**{k: values[k] for k in ARCH_FIELDS}, source=source)
    if arch.hidden_size % arch.num_attention_heads or arch.num_attention_heads % arch.num_key_value_heads:
        raise ConfigError(f"{where}: hidden_size must divide by num_attention_heads, and heads by key-value heads")
    return arch


def check_recipe(r: Recipe) -> None:
    """Shapes and hand-offs that would otherwise fail hours into a run."""
    c, ctx = r.configs, r.arch.max_position_embeddings

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{r.path}: {msg}")

    if "sft" in c:
        need(c["sft"].max_length <= ctx, f"sft.max_length {c['sft'].max_length} exceeds the context {ctx}")
        need(c["sft"].model == r.model, f"sft.model '{c['sft'].model}' is not the recipe's model '{r.model}'")
    for stage, field in (("reward", "model"), ("ppo", "policy"), ("sample", "model")):
        if "sft" in c and stage in c:
            need(getattr(c[stage], field) == c["sft"].out, f"{stage}.{field} should be sft.out ('{c['sft'].out}')")
    if "reward" in c and "ppo" in c:
        need(c["ppo"].reward == c["reward"].out, f"ppo.reward should be reward.out ('{c['reward'].out}')")
        need(not c["reward"].max_length or c["reward"].max_length <= ctx, "reward.max_length exceeds the context")
    if "ppo" in c:
        p = c["ppo"]
        need(p.rollout_batch_size % (p.num_minibatches * r.gpus) == 0,
             f"ppo.rollout_batch_size {p.rollout_batch_size} is not divisible by num_minibatches x gpus = "
             f"{p.num_minibatches} x {r.gpus}")
        need(r.gpus == 1 or p.shared_value_head or "deepspeed" not in r.launcher.lower(),
             "under DeepSpeed PPO needs ppo.shared_value_head: true")
    for stage, cfg in c.items():
        if getattr(cfg, "load_in", ""):
            need(cfg.lora_r > 0, f"{stage}.load_in needs {stage}.lora_r > 0")
        need(cfg.dtype != "fp16" or r.gpus > 0, f"{stage}.dtype fp16 needs GPUs")


# ---------------------------------------------------------------------------------------------------------------
# memory


def _zero3(r: Recipe) -> int:
    """Shards of trained state: the GPU count under ZeRO-3/FSDP, else 1 (DDP replicates)."""
    launcher = r.launcher.lower()
    return r.gpus if r.gpus > 1 and ("zero3" in launcher or "fsdp" in launcher) else 1


def _activations(arch: Arch, tokens: int, checkpointing: bool, dtype_bytes: float, logits: bool = True) -> float:
    """Bytes kept for the backward pass of `tokens` tokens (Korthikanti et al. 2022, ~34 bytes x hidden per token
    and layer in 16-bit with fused attention; with checkpointing only each layer's input plus one layer), plus the
    fp32 logits and their log-softmax over the vocabulary (large for 150k-token vocabularies)."""
    per_layer = tokens * arch.hidden_size * 34 * dtype_bytes / 2
    kept = tokens * arch.hidden_size * dtype_bytes * arch.num_hidden_layers + per_layer if checkpointing \
        else per_layer * arch.num_hidden_layers
    return kept + (2 * tokens * arch.vocab_size * 4 if logits else 0)


def _kv_cache(arch: Arch, seqs: int, length: int, dtype_bytes: float) -> float:
    return 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * dtype_bytes * seqs * length


def _ref_dtype(cfg: Any) -> str:
    """The reference model's storage: ref_dtype, where auto is the policy's own fp32 weights (rlhf.rl.loop)."""
    return "fp32" if getattr(cfg, "ref_dtype", "auto") == "auto" else cfg.ref_dtype


def _model_bytes(arch: Arch, cfg: Any, shards: int) -> tuple[float, str]:
    """(bytes per GPU, description) of one trained model: full (16 bytes/param, sharded under ZeRO-3) or a frozen
    base in dtype / 4/8-bit plus 16 bytes per LoRA parameter."""
    n = arch.params()
    if getattr(cfg, "lora_r", 0):
        base = STORED_BYTES[cfg.load_in or cfg.dtype]
        lora = arch.lora_params(cfg.lora_r)
        return n * base + lora * TRAINED_BYTES, f"{n / 1e9:.2f}B frozen in {cfg.load_in or cfg.dtype} + " \
                                                f"{lora / 1e6:.1f}M LoRA (r={cfg.lora_r}) trained"
    return n * TRAINED_BYTES / shards, f"{n / 1e9:.2f}B trained in full (fp32 weights+grads+Adam" + \
        (f", sharded over {shards} GPUs)" if shards > 1 else ")")


def working_memory(r: Recipe) -> dict[str, tuple[str, float]]:
    """Per training stage, the (item, GiB per GPU) of what is not model state: activations (and PPO's rollout KV
    cache and buffers). Every engine here is data-parallel, so each GPU holds its own micro-batch's: not sharded."""
    arch, out = r.arch, {}
    dbytes = {s: STORED_BYTES[getattr(c, "dtype", "fp32")] for s, c in r.configs.items()}
    if "sft" in r.configs:
        c = r.configs["sft"]
        out["sft"] = (f"activations: {c.batch_size} x {c.max_length} tokens, checkpointing "
                      f"{'on' if c.gradient_checkpointing else 'off'}",
                      _activations(arch, c.batch_size * c.max_length, c.gradient_checkpointing, dbytes["sft"]) / GIB)
    if "reward" in r.configs:
        c = r.configs["reward"]
        length = c.max_length or min(arch.max_position_embeddings, 2048)
        acts = _activations(arch, 2 * c.batch_size * length, c.gradient_checkpointing, dbytes["reward"], logits=False)
        out["reward"] = (f"activations: {2 * c.batch_size} sequences (chosen+rejected) x {length} tokens, "
                         f"checkpointing {'on' if c.gradient_checkpointing else 'off'}", acts / GIB)
    if "ppo" in r.configs:
        c = r.configs["ppo"]
        prompt_len = 512 if "sft" not in r.configs else min(512, r.configs["sft"].max_length)
        seq = prompt_len + c.max_new_tokens
        local = c.rollout_batch_size // r.gpus
        micro = max(1, local // c.num_minibatches // c.grad_accum)
        gen = c.generation_batch_size or local
        train = _activations(arch, micro * seq, c.gradient_checkpointing, dbytes["ppo"])
        if not c.shared_value_head:  # the value model's backward too (a scalar head: no logits)
            train += _activations(arch, micro * seq, c.gradient_checkpointing, dbytes["ppo"], logits=False)
        rollout = _kv_cache(arch, gen, seq, dbytes["ppo"]) + 3 * local * seq * 4 * 4  # + rollout buffers
        out["ppo"] = (f"peak of training micro-batch ({micro} x {seq} tokens, checkpointing "
                      f"{'on' if c.gradient_checkpointing else 'off'}) and rollout KV cache ({gen} sequences)",
                      max(train, rollout) / GIB)
    return out


def estimate(r: Recipe) -> dict[str, list[tuple[str, float]]]:
    """Per stage, the (item, GiB per GPU) lines of the estimate; their sum is the stage's peak."""
    arch, out = r.arch, {}
    shards = _zero3(r)
    dbytes = {s: STORED_BYTES[getattr(c, "dtype", "fp32")] for s, c in r.configs.items()}
    work = working_memory(r)
    if "sft" in r.configs:
        c = r.configs["sft"]
        m, desc = _model_bytes(arch, c, shards)
        out["sft"] = [(f"policy: {desc}", m / GIB), work["sft"]]
    if "sample" in r.configs:
        c = r.configs["sample"]
        out["sample"] = [(f"model in {c.dtype}", arch.params() * dbytes["sample"] / GIB),
                         (f"KV cache: {c.batch_size} sequences x {512 + c.max_new_tokens} tokens (prompts <= 512)",
                          _kv_cache(arch, c.batch_size, 512 + c.max_new_tokens, dbytes["sample"]) / GIB)]
    if "reward" in r.configs:
        c = r.configs["reward"]
        m, desc = _model_bytes(arch, c, shards)
        m -= arch.vocab_size * arch.hidden_size * (0 if arch.tie_word_embeddings else 1) * (
            TRAINED_BYTES / shards if not c.lora_r else STORED_BYTES[c.load_in or c.dtype])  # no LM head
        out["reward"] = [(f"reward model: {desc} (no LM head)", m / GIB), work["reward"]]
    if "ppo" in r.configs:
        c = r.configs["ppo"]
        m, desc = _model_bytes(arch, c, shards)
        frozen = arch.reward_params() * STORED_BYTES[c.load_in or c.dtype]
        lines = [(f"policy: {desc}", m / GIB)]
        lines.append(("reference: the policy with adapters off (no copy)", 0.0) if c.lora_r else
                     (f"reference: frozen copy in {_ref_dtype(c)} (ref_dtype {c.ref_dtype}), on every GPU",
                      arch.params() * STORED_BYTES[_ref_dtype(c)] / GIB))
        lines.append((f"reward model: frozen in {c.load_in or c.dtype} (no LM head), on every GPU", frozen / GIB))
        if c.shared_value_head:
            lines.append(("value: a head on the policy (shared_value_head)", 0.0))
        else:
            cv = dataclasses.replace(c, lora_r=0)
            vm, vdesc = _model_bytes(arch, cv, shards)
            lines.append((f"value model: {vdesc}", vm / GIB))
        lines.append(work["ppo"])
        out["ppo"] = lines
    if "eval" in r.configs:
        c = r.configs["eval"]
        n = 3 * arch.params() * dbytes["eval"]  # policy, baseline, reward model (ref shared with the baseline)
        out["eval"] = [(f"policy, baseline and reward model in {c.dtype}", n / GIB),
                       (f"KV cache: {c.batch_size} sequences", _kv_cache(arch, c.batch_size, 512 + (
                           c.max_new_tokens or 48), dbytes["eval"]) / GIB)]
    for lines in out.values():
        lines.append(("CUDA context and allocator overhead", CUDA_OVERHEAD_GIB))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the sharded plan: FSDP2 and ZeRO-3 side by side, for a recipe on 2+ GPUs (docs/distributed.md)


@dataclass(frozen=True)
class Engine:
    """How an engine stores a trained parameter, in bytes per parameter, each part split over the N GPUs."""
    name: str
    config: str
    param_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    how: str


# 16 bytes per trained parameter under both (as TRAINED_BYTES), split differently:
ENGINES = (
    # accelerate upcasts the trained parameters to fp32 before fully_shard (they are the master weights) and
    # computes in bf16 through MixedPrecisionPolicy; gradients are reduced into the fp32 shards
    Engine("FSDP2", "configs/accelerate/fsdp2.yaml", 4, 4, 8,
           "fp32 parameter shards (the master weights), fp32 gradient shards, Adam's two fp32 moments"),
    # ZeRO with bf16: 2 + 2 + 12 bytes per parameter (Rajbhandari et al. 2020, section 3.1), all three partitioned
    Engine("ZeRO-3", "configs/accelerate/zero3.yaml", 2, 2, 12,
           "bf16 parameter and gradient partitions; the optimiser state holds the fp32 master copy and Adam's moments"),
)
GATHER_BF16 = 2  # both gather parameters for compute in bf16 (MixedPrecisionPolicy.param_dtype; ZeRO's bf16 copy)
ZERO3_MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed's default stage3_max_live_parameters (zero3.yaml does not set it)


@dataclass
class Shard:
    """One model's state in one stage under one engine, in bytes: totals over all GPUs, and what one GPU holds."""
    model: str  # policy, value, reference, reward
    desc: str
    params: float
    grads: float
    optimizer: float
    sharded: bool  # trained (prepared by the engine): split over the GPUs; frozen: a whole copy on every GPU
    gpus: int

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer

    def per_gpu(self, part: str = "total") -> float:
        return getattr(self, part) / (self.gpus if self.sharded else 1)


def _trained(model: str, arch: Arch, n: int, cfg: Any, e: Engine, gpus: int) -> Shard:
    """A model the engine prepares: its trained parameters at the engine's bytes; with LoRA the frozen base sits in
    the same prepared module, so it is sharded too, at its storage dtype."""
    if getattr(cfg, "lora_r", 0):
        lora, base = arch.lora_params(cfg.lora_r), STORED_BYTES[cfg.load_in or cfg.dtype]
        return Shard(model, f"{n / 1e9:.2f}B frozen in {cfg.load_in or cfg.dtype} + {lora / 1e6:.1f}M LoRA trained",
                     n * base + lora * e.param_bytes, lora * e.grad_bytes, lora * e.optimizer_bytes, True, gpus)
    return Shard(model, f"{n / 1e9:.2f}B trained", n * e.param_bytes, n * e.grad_bytes, n * e.optimizer_bytes, True,
                 gpus)


def _frozen(model: str, n: int, dtype: str, gpus: int) -> Shard:
    return Shard(model, f"{n / 1e9:.2f}B frozen in {dtype}, whole on every GPU", n * STORED_BYTES[dtype], 0, 0, False,
                 gpus)


def _gathered(arch: Arch, e: Engine) -> tuple[str, float]:
    """(what, bytes) of trained parameters gathered whole for compute at one time, per GPU (transient)."""
    if e.name == "FSDP2":  # one unit per decoder layer; the root (embeddings, LM head, norm) stays gathered from
        root = arch.params() - arch.num_hidden_layers * arch.layer_params()  # forward to backward
        return ("gathers the root unit (embeddings, LM head, kept from forward to backward) and 2 decoder layers "
                "(one prefetched) in bf16", (root + 2 * arch.layer_params()) * GATHER_BF16)
    live = min(ZERO3_MAX_LIVE_PARAMETERS, arch.params())
    return (f"gathers up to stage3_max_live_parameters (DeepSpeed's default 1e9; {live / 1e9:.2f}B here) in bf16",
            live * GATHER_BF16)


def sharded_plan(r: Recipe, e: Engine) -> dict[str, list[Shard]]:
    """Per training stage, each model's params, grads and optimiser state under engine `e` on r.gpus GPUs."""
    arch, n, g, out = r.arch, r.arch.params(), r.gpus, {}
    if "sft" in r.configs:
        out["sft"] = [_trained("policy", arch, n, r.configs["sft"], e, g)]
    if "reward" in r.configs:
        out["reward"] = [_trained("reward", arch, arch.reward_params(), r.configs["reward"], e, g)]
    if "ppo" in r.configs:
        c = r.configs["ppo"]
        shards = [_trained("policy", arch, n, c, e, g)]
        if c.shared_value_head:
            shards.append(Shard("value", "a head on the policy (shared_value_head)", 0, 0, 0, True, g))
        else:
            shards.append(_trained("value", arch, arch.reward_params(), dataclasses.replace(c, lora_r=0), e, g))
        shards.append(Shard("reference", "the policy with adapters off (no copy)", 0, 0, 0, False, g) if c.lora_r
                      else _frozen("reference", n, _ref_dtype(c), g))
        shards.append(_frozen("reward", arch.reward_params(), c.load_in or c.dtype, g))
        out["ppo"] = shards
    return out


def format_sharded(r: Recipe) -> list[str]:
    """The FSDP2 and ZeRO-3 plans side by side: per model, GiB per GPU as params + grads + optimiser."""
    plans = {e.name: sharded_plan(r, e) for e in ENGINES}
    work = working_memory(r)
    col = 30
    lines = [f"sharded plan over {r.gpus} GPUs, GiB per GPU (params + grads + optimiser = total); trained state is "
             f"split {r.gpus} ways, frozen models are whole on every GPU:"]
    lines += [f"    {e.name}: {e.how} ({e.param_bytes:g} + {e.grad_bytes:g} + {e.optimizer_bytes:g} bytes per trained "
              f"parameter; {e.config})" for e in ENGINES]
    for stage in plans[ENGINES[0].name]:
        lines.append(f"{stage + ':':66}" + "".join(f"{e.name:>{col}}" for e in ENGINES))
        rows: list[tuple[str, list[str]]] = []
        totals = {e.name: 0.0 for e in ENGINES}
        for i, first in enumerate(plans[ENGINES[0].name][stage]):
            cells = []
            for e in ENGINES:
                s = plans[e.name][stage][i]
                totals[e.name] += s.per_gpu()
                cells.append(f"{s.per_gpu('params') / GIB:.1f} + {s.per_gpu('grads') / GIB:.1f} + "
                             f"{s.per_gpu('optimizer') / GIB:.1f} = {s.per_gpu() / GIB:.1f}" if s.sharded and s.total
                             else f"{s.per_gpu() / GIB:.1f}")
            rows.append((f"{first.model}: {first.desc}", cells))
        cells = []
        for e in ENGINES:
            what, b = _gathered(r.arch, e)
            totals[e.name] += b
            cells.append(f"{b / GIB:.1f}")
        rows.append(("gathered for compute (transient, below)", cells))
        for what, gib in (("activations" + (" / rollout KV cache" if stage == "ppo" else "") + " (as above, not sharded)",
                           work[stage][1]),
                          ("CUDA context and allocator overhead", CUDA_OVERHEAD_GIB)):
            rows.append((what, [f"{gib:.1f}"] * len(ENGINES)))
            for e in ENGINES:
                totals[e.name] += gib * GIB
        rows.append((f"total, per GPU (of {r.gpu_memory_gib:g} GiB)",
                     [f"{totals[e.name] / GIB:.1f} " + ("fits" if totals[e.name] / GIB <= r.gpu_memory_gib
                                                        else "DOES NOT FIT") for e in ENGINES]))
        lines += [f"    {label[:62]:62}" + "".join(f"{c:>{col}}" for c in cells) for label, cells in rows]
    lines += [f"    {e.name} {_gathered(r.arch, e)[0]}" for e in ENGINES]
    return lines


KNOBS = {
    "sft": ["--batch_size down with --grad_accum up (same effective batch)", "--gradient_checkpointing true",
            "--lora_r 16 (LoRA; the base is then stored in --dtype)", "--load_in 4bit with --lora_r (QLoRA, CUDA)",
            "--max_length down", "more GPUs with DeepSpeed ZeRO-3 (configs/recipes/accelerate/zero3.yaml)"],
    "reward": ["--batch_size down with --grad_accum up", "--gradient_checkpointing true", "--lora_r 16",
               "--max_length down (longer pairs are skipped and counted)", "--load_in 4bit with --lora_r"],
    "ppo": ["--shared_value_head true (no separate value model)", "--lora_r 16 (no reference copy)",
            "--gradient_checkpointing true", "--grad_accum up / --num_minibatches up (smaller micro-batches)",
            "--generation_batch_size down (smaller KV cache)", "--max_new_tokens down",
            "--load_in 4bit with --lora_r and shared_value_head (QLoRA)"],
    "sample": ["--batch_size down", "--max_new_tokens down"],
    "eval": ["--batch_size down", "--max_new_tokens down"],
}


def format_plan(r: Recipe, est: dict[str, list[tuple[str, float]]]) -> str:
    a = r.arch
    lines = [f"recipe {r.name} ({r.path})",
             f"model {r.model}: {a.params() / 1e9:.2f}B parameters (hidden {a.hidden_size}, {a.num_hidden_layers} "
             f"layers, {a.num_attention_heads}/{a.num_key_value_heads} heads, vocab {a.vocab_size}, "
             f"{'tied' if a.tie_word_embeddings else 'untied'} embeddings; from {a.source})",
             f"hardware {r.gpus} GPU(s) x {r.gpu_memory_gib:g} GiB; launcher: {r.launcher}", ""]
    for stage, items in est.items():
        total = sum(g for _, g in items)
        fits = total <= r.gpu_memory_gib
        launcher = "rlhf" if stage in ("sample", "eval") else r.launcher  # one process: no launcher needed
        lines.append(f"{stage}: {launcher} {stage} --config {r.path}")
        lines += [f"    {g:7.1f} GiB  {what}" for what, g in items]
        lines.append(f"    {total:7.1f} GiB  per GPU of {r.gpu_memory_gib:g}: "
                     + ("fits" if fits else "DOES NOT FIT; turn: " + "; ".join(KNOBS[stage])))
    if r.gpus > 1 and any(stage in r.configs for stage in ("sft", "reward", "ppo")):
        lines += [""] + format_sharded(r)
    lines += ["", "estimates are +-20%: the memory model is in docs/recipes.md"] + [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def dry_run(path: str | Path) -> int:
    """Print the plan and memory estimate of a recipe; 0 if every stage fits, 1 if one does not."""
    r = load_recipe(path)
    est = estimate(r)
    print(format_plan(r, est))
    return 0 if all(sum(g for _, g in items) <= r.gpu_memory_gib for items in est.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m rlhf.plan RECIPE.yaml", file=sys.stderr)
        return 2
    try:
        return dry_run(argv[0])
    except UserError as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

