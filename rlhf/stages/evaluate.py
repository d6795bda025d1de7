"""Evaluation: compare a policy with a baseline (by default the SFT model its training run started from) on held-out
prompts, by the reward model, by the gold judge and by a second, independent judge.

    rlhf eval --policy runs/x/ppo --reward runs/x/reward --prompts runs/x/data/prompts_heldout.jsonl --gold demo

Both models sample `samples_per_prompt` responses per prompt with the same seeds: the i-th policy and the i-th
baseline response of a prompt share their random numbers (identical models give identical responses). Then:
reward-model score, gold and TextBlob scores, KL of the policy's samples to the reference, win rates with 95%
Wilson intervals, length, EOS rate and diversity. Every number and its definition: docs/eval.md.
Writes out/eval.json, out/samples.jsonl (side by side), out/config.yaml, and out/summary.json last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf.artifacts import policy_run, rm_accuracy
from rlhf.config import Device, Dtype, Gold, PrecisionOptions, RunOptions, check, opt, save_config
from rlhf.core import kl_estimate
from rlhf.errors import UserError
from rlhf.io import atomic_write_text, write_jsonl
from rlhf.models.data_source import read_rows
from rlhf.models.prompts import encode_prompts
from rlhf.stages.common import check_tokenizers, console, progress, say, set_seed, stage_outputs, write_summary

DEFAULT_TEMPERATURE = 0.7  # PPO's default: eval samples the way the policy was trained to be sampled
DEFAULT_MAX_NEW_TOKENS = 48
Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class EvalConfig(PrecisionOptions, RunOptions):
    """eval options"""

    policy: str = opt("", "the policy to evaluate: a model folder (e.g. RUN/ppo) or hub id")
    baseline: str = opt("", "the model to compare with; empty = the reference of the training run in --policy (its "
                        "config.yaml: ref, else policy), i.e. the SFT model")
    ref: str = opt("", "reference model for the KL; empty = the training run's reference, else --baseline")
    reward: str = opt("", "reward model folder (from `rlhf reward`)")
    prompts: str = opt("", "held-out prompts JSONL {'prompt_id', 'prompt'}; empty = RUN/data/prompts_heldout.jsonl "
                       "for a policy in RUN/ppo")
    out: str = opt("", "output folder; empty = RUN/eval for a policy in RUN/ppo")
    n_prompts: int = opt(0, "use the first N prompts (0 = all)")
    samples_per_prompt: int = opt(1, "responses per prompt from each model (pairs: the i-th of each)")
    temperature: float | None = opt(None, "sampling temperature of both models and of the KL's log-probs; empty = "
                                    "the on-policy run's (its config.yaml), else 0.7")
    max_new_tokens: int | None = opt(None, "longest response in tokens; empty = the on-policy run's, else 48")
    seed: int = opt(0, "sampling seed (the same random numbers for both models)")
    gold: Gold = opt("", "gold judge: 'demo' (the demo task's sentiment judge, plus TextBlob polarity as a second "
                     "judge) or '' for none")
    batch_size: int = opt(32, "prompts generated and scored together")
    dtype: Dtype = opt("fp32", "weights dtype: fp32, bf16 or fp16 (fp16: CUDA only)")
    device: Device = opt("auto", "auto, cpu or cuda")
    use_model_generation_config: bool = opt(False, "also apply each model's own generation_config.json "
                                            "(repetition_penalty, ...) when sampling; off: softmax(logits / "
                                            "temperature), the distribution the KL is measured under")
    reward_summary: str = opt("", "the reward stage's eval.json or summary.json (held-out RM accuracy, Bayes "
                              "accuracy); empty = look in --reward")
    label_db: str = opt("", "also add blind pairwise tasks (policy vs baseline, order randomised and recorded) to this "
                        "labeling store (path or URL); use a database apart from the training labels")
    label_tasks: int = opt(0, "how many pairs become labeling tasks, a seeded random subset (0 = all)")
    label_overlap: int = opt(1, "distinct labelers per labeling task")

    def validate(self) -> None:
        super().validate()  # every Literal field holds one of its choices (also for a config made in Python)
        check(bool(self.policy), "policy", "no policy model given", "pass --policy RUN/ppo")
        check(bool(self.reward), "reward", "no reward model given", "pass --reward RUN/reward")
        check(self.n_prompts >= 0, "n_prompts", "must be >= 0", "use 0 for all prompts")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1", "use 1 or more")
        check(self.temperature is None or self.temperature > 0, "temperature", "must be > 0",
              "use the PPO run's temperature (e.g. 0.7); greedy decoding has no KL to measure")
        check(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1",
              "use 1 or more")
        check(self.batch_size >= 1, "batch_size", "must be >= 1", "use 1 or more")
        check(self.label_tasks >= 0, "label_tasks", "must be >= 0", "use 0 for every pair")
        check(self.label_overlap >= 1, "label_overlap", "must be >= 1", "use 1 or more labelers per task")


@dataclass
class Responses:
    """One model's responses, in item order (prompt-major, then sample index)."""

    texts: list[str] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    length: list[int] = field(default_factory=list)  # response tokens, incl. the EOS
    ended: list[bool] = field(default_factory=list)
    gold: list[float] | None = None
    textblob: list[float] | None = None


@stage_outputs(resolve=lambda cfg: resolve(cfg), out="dir")  # the resolved out, checked before any work
def run(cfg: EvalConfig) -> Path:
    from rlhf.models.generation import decode_responses, generate, left_pad, stop_token_ids
    from rlhf.models.reward import load_reward_model

    # 0. defaults that come from the training run (baseline, reference, temperature, paths); the resolved config is saved
    cfg = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # summary.json marks a finished stage; this one is not yet
    save_config(cfg, out / "config.yaml")
    set_seed(cfg.seed)
    from rlhf.models.precision import check_dtype, resolve_device

    device = torch.device(resolve_device(cfg.device))  # cuda asked for on a machine without one: an error
    check_dtype(cfg.dtype, device.type)  # inference: the weights are loaded in this dtype
    t_start = time.perf_counter()

    # 1. prompts, models (a path named twice is loaded once), reward model; one tokenizer for all of them
    rows = read_rows(cfg.prompts, required=("prompt",))[: cfg.n_prompts or None]
    rm_eval = read_rm_accuracy(cfg)
    tok, models = load_models(cfg, device)
    policy, baseline, ref = models[cfg.policy], models[cfg.baseline], models[cfg.ref]
    reward = load_reward_model(cfg.reward, dtype=cfg.dtype, device=str(device))
    check_tokenizers(tok, {"baseline": cfg.baseline, "ref": cfg.ref, "reward": reward.tokenizer_path}, cfg.policy)
    context = min(getattr(m.config.get_text_config(), "max_position_embeddings", None) or 10**9 for m in models.values())
    encoded = encode_prompts(rows, tok, cfg.prompts, context, cfg.max_new_tokens)
    # a response ends at any EOS either model declares (they share one tokenizer)
    eos_ids = list(dict.fromkeys(stop_token_ids(policy, tok) + stop_token_ids(baseline, tok)))

    # 2. sample both models with the same seed per chunk; score with the RM; KL of the policy's samples to the ref
    items = [(i, j) for i in range(len(rows)) for j in range(cfg.samples_per_prompt)]
    res = {"policy": Responses(), "baseline": Responses()}
    kl_k1: list[float] = []
    kl_k3: list[float] = []
    with progress() as bar:
        task = bar.add_task("eval", total=len(items), info="")
        for c, start in enumerate(range(0, len(items), cfg.batch_size)):
            chunk = items[start:start + cfg.batch_size]
            p_ids, p_mask = left_pad([encoded[i] for i, _ in chunk], tok.pad_token_id)
            for name, model in (("policy", policy), ("baseline", baseline)):
                # common random numbers: the pair differs only through the models, not through sampling noise
                torch.manual_seed(cfg.seed * 1_000_003 + c)
                b = generate(model, p_ids.to(device), p_mask.to(device), max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id,
                             use_model_generation_config=cfg.use_model_generation_config)
                with torch.inference_mode():
                    scores, _ = reward(b.input_ids, b.attention_mask)
                r = res[name]
                r.reward += scores.float().cpu().tolist()
                r.length += b.response_mask.sum(1).cpu().tolist()
                r.ended += b.ended.cpu().tolist()
                r.texts += decode_responses(tok, b, eos_ids)
                if name == "policy":
                    k1, k3 = sequence_kl(policy, ref, b, cfg.temperature)
                    kl_k1 += k1.cpu().tolist()
                    kl_k3 += k3.cpu().tolist()
            bar.update(task, advance=len(chunk), info="")

    # 3. judges on the response text only (the prompt is shared): gold, and TextBlob to catch gold-judge gaming
    if cfg.gold == "demo":
        from rlhf.data.gold import gold_scores, textblob_polarity

        for r in res.values():
            r.gold = gold_scores(r.texts)
            r.textblob = [textblob_polarity(t) for t in r.texts]

    # 4. metrics and the side-by-side rows
    report = build_report(cfg, res, kl_k1, kl_k3, rm_eval, n_prompts=len(rows))
    samples = side_by_side(rows, items, res, kl_k1)
    if cfg.label_db:
        report["labeling"] = add_label_tasks(cfg, samples)

    # 5. write (summary.json last: it marks the stage complete) and show the table
    write_jsonl(out / "samples.jsonl", samples)
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2) + "\n")
    print_table(report)
    write_summary(out, {"eval_s": time.perf_counter() - t_start, "pairs": len(items),
                        "win_rate": report["win_rate"], "kl": report["kl"]}, kind="eval")
    say(f"[eval] {len(items)} pairs on {len(rows)} prompts -> {out}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# metrics: pure functions


def pair_outcomes(policy: list[float], baseline: list[float], same: list[bool]) -> list[float]:
    """Per pair: 1 if the policy's score is higher, 0 if lower, 0.5 for a tie (equal scores, or identical texts,
    which are a tie whatever tiny float differences batching leaves in their scores)."""
    return [0.5 if s or p == b else float(p > b) for p, b, s in zip(policy, baseline, same)]


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927). Ties count as half a success, so `successes` may be
    fractional; the interval then treats them like any other outcome of rate p = successes / n."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def words(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and apostrophes (as the demo's gold judge reads text)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / n-grams over all texts pooled (Li et al. 2016); 0.0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_overlap(texts: list[str], n: int = 4) -> float | None:
    """A self-BLEU-like cross-sample overlap: the mean over ordered pairs (a, b), a != b, of |G(a) & G(b)| / |G(a)|,
    G = the set of a text's word n-grams; texts with no n-gram are skipped as `a` (they still count as `b`).
    1.0: every response repeats the others; 0.0: no n-gram is shared. None when it is undefined (< 2 texts, or
    no text has an n-gram). Computed from n-gram document frequencies in O(total n-grams):
    sum over b != a of |G(a) & G(b)| = sum over g in G(a) of (df(g) - 1)."""
    sets = [set(ngrams(words(t), n)) for t in texts]
    if len(sets) < 2:
        return None
    df = Counter(g for s in sets for g in s)
    per_text = [sum(df[g] - 1 for g in s) / (len(s) * (len(sets) - 1)) for s in sets if s]
    return sum(per_text) / len(per_text) if per_text else None


@torch.inference_mode()
def sequence_kl(policy: Any, ref: Any, batch: Any, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) per-sequence estimates of KL(pi || pi_ref) from the policy's own samples, with both log-probs at the
    sampling temperature (as PPO's objective/kl): k1 = sum_t d_t and k3 = sum_t exp(-d_t) - 1 + d_t,
    d_t = logp_t - ref_logp_t over the response tokens (incl. the EOS)."""
    from rlhf.models.generation import response_logprobs

    logp, _ = response_logprobs(policy, batch, temperature)
    ref_logp, _ = response_logprobs(ref, batch, temperature)
    mask = batch.response_mask
    return (kl_estimate(logp, ref_logp, "k1") * mask).sum(1), (kl_estimate(logp, ref_logp, "k3") * mask).sum(1)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ---------------------------------------------------------------------------------------------------------------
# report, side-by-side rows, labeling tasks, table


def build_report(cfg: EvalConfig, res: dict[str, Responses], kl_k1: list[float], kl_k3: list[float],
                 rm_eval: dict[str, Any], n_prompts: int) -> dict[str, Any]:
    """eval.json (keys defined in docs/eval.md)."""
    pol, base = res["policy"], res["baseline"]
    n = len(pol.texts)
    same = [a == b for a, b in zip(pol.texts, base.texts)]

    def both(attr: str, fn: Any = _mean) -> dict[str, Any]:
        vals = {k: getattr(r, attr) for k, r in res.items()}
        return {k: (fn(v) if v is not None else None) for k, v in (("baseline", vals["baseline"]),
                                                                  ("policy", vals["policy"]))}

    win, ci, ties = {}, {}, {}
    for judge in ("reward", "gold", "textblob"):
        p, b = getattr(pol, judge), getattr(base, judge)
        if p is None:
            win[judge] = ci[judge] = ties[judge] = None
            continue
        outcomes = pair_outcomes(p, b, same)
        win[judge] = _mean(outcomes)
        ci[judge] = list(wilson_interval(sum(outcomes), n))
        ties[judge] = sum(o == 0.5 for o in outcomes)
    return {
        "gold": both("gold"),
        "reward": both("reward"),
        "kl": _mean(kl_k1),
        "win_rate": win,
        "length": both("length"),
        "rm": rm_eval,
        # extras
        "win_rate_ci95": ci,
        "win_rate_ci_method": "wilson score interval (z = 1.96), ties count half",
        "ties": ties,
        "identical_pairs": sum(same),
        "kl_std": _std(kl_k1),
        "kl_k3": _mean(kl_k3),
        "reward_std": both("reward", _std),
        "gold_std": both("gold", _std),
        "textblob": both("textblob"),
        "eos_rate": both("ended", lambda xs: _mean([float(x) for x in xs])),
        "diversity": {k: {"distinct1": distinct_n(r.texts, 1), "distinct2": distinct_n(r.texts, 2),
                          "self_overlap4": self_overlap(r.texts, 4)} for k, r in res.items()},
        "n": {"prompts": n_prompts, "samples_per_prompt": cfg.samples_per_prompt, "pairs": n},
        "models": {"policy": cfg.policy, "baseline": cfg.baseline, "ref": cfg.ref, "reward": cfg.reward},
        "sampling": {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "top_p": 1.0,
                     "top_k": 0, "seed": cfg.seed, "use_model_generation_config": cfg.use_model_generation_config},
        "gold_judge": cfg.gold or None,
    }


def side_by_side(rows: list[dict[str, Any]], items: list[tuple[int, int]], res: dict[str, Responses],
                 kl_k1: list[float]) -> list[dict[str, Any]]:
    """samples.jsonl: one row per pair, the report's side-by-side table."""
    out = []
    for k, (i, j) in enumerate(items):
        row: dict[str, Any] = {"prompt_id": str(rows[i].get("prompt_id", i)), "prompt": rows[i]["prompt"], "sample": j}
        for name in ("baseline", "policy"):
            row[name] = res[name].texts[k]
        for attr in ("gold", "reward", "textblob", "length", "ended"):
            for name in ("baseline", "policy"):
                vals = getattr(res[name], attr)
                row[f"{name}_{attr}"] = vals[k] if vals is not None else None
        row["policy_kl"] = kl_k1[k]
        out.append(row)
    return out


def add_label_tasks(cfg: EvalConfig, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairwise tasks for blind human judgement: the two responses in a seeded random order, recorded in the task's
    source as `order` (e.g. ["baseline", "policy"]: response 0 is the baseline's). Identical pairs are skipped."""
    from rlhf.labeling.store import Store, TaskSpec

    pairs = [s for s in samples if s["policy"] != s["baseline"]]
    identical = len(samples) - len(pairs)
    rng = random.Random(cfg.seed)
    if cfg.label_tasks and cfg.label_tasks < len(pairs):
        pairs = rng.sample(pairs, cfg.label_tasks)
    specs = []
    for s in pairs:
        order = ["policy", "baseline"] if rng.random() < 0.5 else ["baseline", "policy"]
        source = {"purpose": "eval", "eval_dir": cfg.out, "prompt_id": s["prompt_id"], "sample": s["sample"],
                  "order": order, "models": {"policy": cfg.policy, "baseline": cfg.baseline},
                  "sampling": {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}}
        specs.append(TaskSpec("pairwise", s["prompt"], [s[o] for o in order], source, overlap=cfg.label_overlap))
    store = Store(cfg.label_db)
    try:
        new_ids, existing = store.add_tasks(specs)
    finally:
        store.close()
    say(f"[eval] labeling: {len(new_ids)} pairwise tasks added to {cfg.label_db} ({existing} already there, "
                  f"{identical} identical pairs skipped)")
    return {"db": cfg.label_db, "tasks_added": len(new_ids), "already_present": existing,
            "identical_skipped": identical}


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    def fmt(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    table = Table(title=f"eval: policy vs baseline ({report['n']['pairs']} pairs)")
    for col in ("", "baseline", "policy", "win rate [95% CI]"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label in (("reward", "reward model"), ("gold", "gold judge"), ("textblob", "TextBlob polarity")):
        if report[key]["policy"] is None:
            continue
        ci = report["win_rate_ci95"][key]
        table.add_row(label, fmt(report[key]["baseline"], "+.3f"), fmt(report[key]["policy"], "+.3f"),
                      f"{report['win_rate'][key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    table.add_row("length (tokens)", fmt(report["length"]["baseline"], ".1f"), fmt(report["length"]["policy"], ".1f"), "")
    table.add_row("EOS rate", fmt(report["eos_rate"]["baseline"], ".2f"), fmt(report["eos_rate"]["policy"], ".2f"), "")
    for key, label in (("distinct2", "distinct-2"), ("self_overlap4", "self-overlap-4")):
        d = report["diversity"]
        table.add_row(label, fmt(d["baseline"][key]), fmt(d["policy"][key]), "")
    kl_std = f" ± {report['kl_std']:.3f}" if report["kl_std"] is not None else ""
    table.caption = f"KL(policy || ref) = {report['kl']:.3f}{kl_std} nats per response"
    if report["rm"]["accuracy"] is not None:
        table.caption += f"; RM held-out accuracy {report['rm']['accuracy']:.3f}"
    console.print(table)


# ---------------------------------------------------------------------------------------------------------------
# inputs


def resolve(cfg: EvalConfig) -> EvalConfig:
    """Fill the empty fields from the training run in --policy (its config.yaml, read through rlhf.artifacts: a PPO,
    RLOO, GRPO, REINFORCE++ or DPO output folder) and the run folder around it."""
    run = policy_run(cfg.policy)
    run_dir = Path(cfg.policy).parent if Path(cfg.policy).is_dir() else None
    reference = run.get("ref") or run.get("policy") or run.get("model") or ""  # DPO names its start `model`
    if reference and (not cfg.baseline or not cfg.ref):
        _check_named_model(reference, cfg.policy)
    baseline = cfg.baseline or reference
    if not baseline:
        raise UserError(f"config field 'baseline': '{cfg.policy}' is not the output folder of a policy-training run "
                        "(ppo, rloo, grpo, reinforce_pp, dpo: a config.yaml naming the model it started from), so the "
                        "baseline is unknown; pass --baseline SFT_FOLDER")
    prompts = cfg.prompts
    if not prompts:
        guess = run_dir / "data" / "prompts_heldout.jsonl" if run_dir else None
        if guess is None or not guess.exists():
            raise UserError("config field 'prompts': no held-out prompt file given" +
                            (f" and {guess} does not exist" if guess else "") + "; pass --prompts FILE.jsonl")
        prompts = str(guess)
    out = cfg.out
    if not out:
        if run_dir is None:
            raise UserError(f"config field 'out': '{cfg.policy}' is not a local folder, so there is no run folder "
                            "to write eval/ into; pass --out FOLDER")
        out = str(run_dir / "eval")
    return dataclasses.replace(
        cfg, baseline=baseline, ref=cfg.ref or reference or baseline, prompts=prompts, out=out,
        # an on-policy run's own sampling settings; DPO samples nothing, so it gets the defaults
        temperature=cfg.temperature if cfg.temperature is not None else float(run.get("temperature",
                                                                                      DEFAULT_TEMPERATURE)),
        max_new_tokens=cfg.max_new_tokens if cfg.max_new_tokens is not None else int(run.get(
            "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
    )


def _check_named_model(name: str, policy: str) -> None:
    """A reference read from the PPO config may be a path relative to where PPO ran: say where it came from."""
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).exists():
        raise UserError(f"{Path(policy) / 'config.yaml'}: the PPO reference '{name}' does not exist from here (a "
                        "path relative to where PPO ran?); pass --baseline SFT_FOLDER (and --ref)")


def load_models(cfg: EvalConfig, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The policy's tokenizer (left padding for generation) and {path: model} for policy, baseline and ref, each
    distinct path loaded once, frozen, in eval mode (dropout off: sampling and log-probs agree)."""
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(cfg.policy, padding_side="left")
    models: dict[str, Any] = {}
    for path in (cfg.policy, cfg.baseline, cfg.ref):
        if path not in models:
            models[path] = load_causal_lm(path, cfg.dtype).to(device).eval().requires_grad_(False)
    return tok, models


def read_rm_accuracy(cfg: EvalConfig) -> dict[str, Any]:
    """{"accuracy", "bayes_accuracy", "source"} from the reward stage's eval.json / summary.json (keys
    eval/rm_accuracy, eval/rm_bayes_accuracy); nulls, and a note, when the reward model has no held-out eval."""
    given = Path(cfg.reward_summary) if cfg.reward_summary else None
    if given is not None and not given.exists():
        raise UserError(f"config field 'reward_summary': {given} does not exist; pass the reward stage's eval.json "
                        "or summary.json, or leave it empty")
    folder = given if given is not None and given.is_dir() else None
    candidates = [given] if given is not None and folder is None else [
        (folder or Path(cfg.reward)) / "eval.json", (folder or Path(cfg.reward)) / "summary.json"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        acc, bayes, _ = rm_accuracy(data)
        if acc is not None:
            return {"accuracy": acc, "bayes_accuracy": bayes, "source": str(path)}
        if given is not None:
            raise UserError(f"{path}: no 'eval/rm_accuracy' key (was the reward model trained with held-out pairs?)")
    say(f"[eval] note: no held-out reward-model accuracy found in {given or cfg.reward} "
                  "(eval.json / summary.json); rm.accuracy is null")
    return {"accuracy": None, "bayes_accuracy": None, "source": None}
