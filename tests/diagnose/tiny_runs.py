"""Tiny real runs for the doctor and report tests: a base LM trained by `sft` on a few sentences, scalar-head
"reward models" built from it (random heads: any reward will do for the mechanics, and optimising a random
reward is a fine way to over-optimise), and short PPO / SFT runs with deliberately broken settings.

Synthetic stage folders (metrics rows written by hand) are made with `write_stage`; every test that uses one says
why a real run is not feasible for that rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.io import write_jsonl
from tests.conftest import SENTENCES

PROMPTS = ["the hotel", "this film", "the staff", "i bought", "the food", "a boring", "the blender", "the lamp"]


def build_base(d: Path) -> dict[str, Path]:
    """Base LM (sft with held-out eval: a healthy SFT stage), reward models and prompts under `d`."""
    import torch

    from rlhf.models.loading import default_head_std, load_scalar_model, load_tokenizer
    from rlhf.stages import sft

    write_jsonl(d / "train.jsonl", [{"text": s} for s in SENTENCES * 30])
    write_jsonl(d / "val.jsonl", [{"text": s} for s in SENTENCES])
    write_jsonl(d / "prompts.jsonl", [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    base = sft.run(sft.SFTConfig(model="tiny:tiny", tokenizer_vocab_size=300, data=str(d / "train.jsonl"),
                                 eval_data=str(d / "val.jsonl"), out=str(d / "base"), max_steps=40, batch_size=8,
                                 lr=1e-2, warmup_steps=4, save_every=0, log_every=5, eval_every=10, device="cpu"))
    tok = load_tokenizer(base)

    def reward_model(folder: Path, seed: int, reward_config: dict[str, Any] | None) -> Path:
        torch.manual_seed(seed)
        rm = load_scalar_model(base, init_head_std=default_head_std(load_scalar_model(base)))
        rm.save_pretrained(folder)
        tok.save_pretrained(folder)
        if reward_config is not None:
            (folder / "reward_config.json").write_text(json.dumps({"format": "rlhf-reward-v1", **reward_config}))
        return folder

    # "normalised" as far as PPO and the doctor can tell (gain 1, bias 0): its raw scores are already ~N(0, 1/2)
    rm = reward_model(d / "rm", 0, {"gain": 1.0, "bias": 0.0})
    # the same head scaled x10 and shifted +3: scores many std above the normalisation
    hot = reward_model(d / "rm_hot", 0, {"gain": 10.0, "bias": 3.0})
    swapped = swapped_reward_model(base, d / "rm_swapped")
    return {"dir": d, "base": base, "rm": rm, "rm_hot": hot, "rm_swapped": swapped, "prompts": d / "prompts.jsonl"}


NEGATIVE = {1, 3, 5}  # indices of the negative reviews in SENTENCES


def swapped_reward_model(base: Path, folder: Path) -> Path:
    """A reward model that learned the labels backwards: its head is the direction (in the base model's last
    hidden state) from the positive to the negative training sentences, normalised to mean 0 / std 1 on them.
    Optimising it pushes the policy toward negative reviews, so the demo's gold judge (sentiment) must fall."""
    import torch

    from rlhf.models.loading import load_scalar_model, load_tokenizer, scalar_head

    tok = load_tokenizer(base)
    rm = load_scalar_model(base, init_head_std=0.0).eval()
    head = scalar_head(rm)
    seen = []
    hook = head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0][0, -1]))
    with torch.no_grad():
        for s in SENTENCES:
            rm(input_ids=torch.tensor([tok(s)["input_ids"] + [tok.eos_token_id]]))
        hook.remove()
        feats = torch.stack(seen)
        neg = feats[sorted(NEGATIVE)].mean(0)
        pos = feats[[i for i in range(len(SENTENCES)) if i not in NEGATIVE]].mean(0)
        head.weight.copy_(((neg - pos) / (neg - pos).norm())[None])
        raw = feats @ head.weight[0]
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    mean, std = float(raw.mean()), float(raw.std())
    (folder / "reward_config.json").write_text(json.dumps({"format": "rlhf-reward-v1", "gain": 1 / std,
                                                           "bias": -mean / std}))
    return folder


def ppo_run(setup: dict[str, Path], out: Path, **kw: Any) -> Path:
    """A short PPO run; defaults are the healthy settings (value lr high enough for the tiny value model to learn,
    responses long enough to end)."""
    from rlhf.stages import ppo

    cfg = dict(policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]), out=str(out),
               updates=8, rollout_batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=24, lr=1e-4,
               value_lr=3e-3, gold="demo", save_every=0, log_samples_every=0, tensorboard=False, device="cpu", seed=0)
    cfg.update(kw)
    return ppo.run(ppo.PPOConfig(**cfg))


def sft_run(out: Path, train: list[str], val: list[str], **kw: Any) -> Path:
    from rlhf.stages import sft

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out.parent / f"{out.name}_train.jsonl", [{"text": s} for s in train])
    write_jsonl(out.parent / f"{out.name}_val.jsonl", [{"text": s} for s in val])
    cfg = dict(model="tiny:tiny", tokenizer_vocab_size=300, data=str(out.parent / f"{out.name}_train.jsonl"),
               eval_data=str(out.parent / f"{out.name}_val.jsonl"), out=str(out), max_steps=30, batch_size=8,
               lr=1e-2, warmup_steps=2, save_every=0, log_every=5, eval_every=5, device="cpu")
    cfg.update(kw)
    return sft.run(sft.SFTConfig(**cfg))


def write_stage(folder: Path, rows: list[dict[str, Any]], config: dict[str, Any] | None = None,
                summary: dict[str, Any] | None = None, eval: dict[str, Any] | None = None) -> Path:
    """A synthetic stage folder: metrics.jsonl (json writes NaN/Infinity as the stages do), config.yaml,
    summary.json (given or {} so the stage counts as finished) and eval.json."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    if rows:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps(summary if summary is not None else {}))
    if eval is not None:
        (folder / "eval.json").write_text(json.dumps(eval))
    return folder


def ppo_rows(n: int, **series: Any) -> list[dict[str, Any]]:
    """n healthy-looking PPO metric rows; keyword arguments override a metric with a function of the update
    index (1-based) or a constant."""
    healthy = {
        "objective/scores": lambda u: 0.1 * u, "objective/kl": lambda u: 0.2 * (u - 1),
        "objective/entropy": lambda u: 1.0 - 0.01 * u, "value/explained_variance": lambda u: min(0.8, 0.1 * u),
        "loss/value": lambda u: 0.5 / u, "policy/clipfrac": lambda u: 0.1, "policy/approxkl": lambda u: 0.01,
        "response/length_mean": lambda u: 20.0, "response/eos_fraction": lambda u: 0.95,
        "response/distinct2": lambda u: 0.8, "lr/value": lambda u: 1e-5,
    }
    healthy.update({k: (v if callable(v) else (lambda u, v=v: v)) for k, v in series.items()})
    return [{"step": u, **{k: f(u) for k, f in healthy.items() if f(u) is not None}} for u in range(1, n + 1)]
