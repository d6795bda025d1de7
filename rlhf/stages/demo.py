"""The demo: the pipeline on the embedded default task (positive review continuation), on a laptop CPU.

Stages so far: embedded corpus -> base pre-training of a tiny Llama -> SFT on prompt/response -> sampling.
Each stage is skipped when its output is complete (its `summary.json` exists), so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import check, opt, save_config
from rlhf.stages.common import console, stage_done, write_summary

# preset -> settings. `default` is what `make demo` runs; `tiny` is the fast version used by tests.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(n_reviews=20000, model="tiny:small", vocab=2048, pretrain_steps=1200, sft_steps=300,
                    batch_size=32, lr=3e-3, sample_prompts=256, k=4, max_new_tokens=48),
    "tiny": dict(n_reviews=2000, model="tiny:tiny", vocab=1024, pretrain_steps=60, sft_steps=20,
                 batch_size=16, lr=5e-3, sample_prompts=16, k=2, max_new_tokens=24),
}


@dataclass
class DemoConfig:
    out: str = opt("runs/demo", "run folder: every stage writes a subfolder here")
    preset: str = opt("default", "size of the demo: default (minutes on a laptop CPU) or tiny (seconds; tests)")
    seed: int = opt(0, "seed for the corpus, models and sampling")
    device: str = opt("auto", "auto, cpu or cuda")

    def validate(self) -> None:
        check(self.preset in PRESETS, "preset", f"unknown '{self.preset}'", f"use one of {', '.join(PRESETS)}")


def run(cfg: DemoConfig) -> Path:
    from rlhf.data.demo import write_demo_data
    from rlhf.stages import sample, sft

    p = PRESETS[cfg.preset]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    times: dict[str, float] = {}

    # 1. the embedded corpus: reviews, SFT pairs, prompts (train / held-out)
    t = time.perf_counter()
    data_dir = out / "data"
    if not (data_dir / "prompts_heldout.jsonl").exists():
        write_demo_data(data_dir, seed=cfg.seed, n_reviews=p["n_reviews"])
    times["data"] = time.perf_counter() - t

    # 2. base model: a tiny Llama pre-trained on the review corpus (tokenizer trained on it too)
    base = out / "base"
    t = time.perf_counter()
    if not stage_done(base):
        sft.run(sft.SFTConfig(model=p["model"], tokenizer_vocab_size=p["vocab"], data=str(data_dir / "pretrain_train.jsonl"),
                              eval_data=str(data_dir / "pretrain_val.jsonl"), out=str(base), max_steps=p["pretrain_steps"],
                              batch_size=p["batch_size"], lr=p["lr"], warmup_steps=max(1, p["pretrain_steps"] // 20),
                              eval_every=max(1, p["pretrain_steps"] // 4), save_every=max(1, p["pretrain_steps"] // 4),
                              seed=cfg.seed, device=cfg.device, resume=True))
    times["pretrain"] = time.perf_counter() - t

    # 3. SFT: prompt -> continuation pairs (loss on the continuation); the result is the initial policy and reference
    sft_dir = out / "sft"
    t = time.perf_counter()
    if not stage_done(sft_dir):
        sft.run(sft.SFTConfig(model=str(base), data=str(data_dir / "sft_train.jsonl"),
                              eval_data=str(data_dir / "sft_val.jsonl"), out=str(sft_dir), max_steps=p["sft_steps"],
                              batch_size=p["batch_size"], lr=p["lr"] / 3, warmup_steps=max(1, p["sft_steps"] // 10),
                              eval_every=max(1, p["sft_steps"] // 2), save_every=max(1, p["sft_steps"] // 2),
                              seed=cfg.seed, device=cfg.device, resume=True))
    times["sft"] = time.perf_counter() - t

    # 4. K samples per training prompt from the SFT model (what labelers will compare)
    samples = out / "samples.jsonl"
    t = time.perf_counter()
    if not samples.exists():
        sample.run(sample.SampleConfig(model=str(sft_dir), prompts=str(data_dir / "prompts_train.jsonl"),
                                       out=str(samples), k=p["k"], max_prompts=p["sample_prompts"],
                                       max_new_tokens=p["max_new_tokens"], seed=cfg.seed, device=cfg.device))
    times["sample"] = time.perf_counter() - t

    summary = _summary(out, times)
    write_summary(out, summary)
    _print_summary(out, summary)
    return out


def _summary(out: Path, times: dict[str, float]) -> dict[str, Any]:
    def ppl(stage: str) -> dict[str, float | None]:
        first = last = None
        for line in (out / stage / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "eval/perplexity" in row:
                first = row["eval/perplexity"] if first is None else first
                last = row["eval/perplexity"]
        return {"untrained": first, "trained": last}

    return {"perplexity": {"base": ppl("base"), "sft": ppl("sft")}, "time_s": times,
            "outputs": {"base": str(out / "base"), "sft": str(out / "sft"), "samples": str(out / "samples.jsonl")}}


def _print_summary(out: Path, s: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="rlhf demo")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("time", justify="right")
    b, f = s["perplexity"]["base"], s["perplexity"]["sft"]
    table.add_row("data", "embedded review corpus", f"{s['time_s']['data']:.0f}s")
    if b["untrained"] is not None:
        table.add_row("pretrain", f"val perplexity {b['untrained']:.1f} -> {b['trained']:.2f}", f"{s['time_s']['pretrain']:.0f}s")
    if f["untrained"] is not None:
        table.add_row("sft", f"val perplexity {f['untrained']:.2f} -> {f['trained']:.2f}", f"{s['time_s']['sft']:.0f}s")
    table.add_row("sample", s["outputs"]["samples"], f"{s['time_s']['sample']:.0f}s")
    console.print(table)
    rows = [json.loads(x) for x in Path(s["outputs"]["samples"]).read_text().splitlines()[:3]]
    for r in rows:
        console.print(f"[bold]{escape(r['prompt'])}[/bold]{escape(r['responses'][0])}", highlight=False)
    console.print(f"outputs: {out}/ (base/, sft/, samples.jsonl)")
