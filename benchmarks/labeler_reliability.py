"""Labeler reliability on the demo task: simulated labelers with known noise (some deliberately bad) rank the demo's
samples; (a) the one-coin Dawid-Skene estimate (rlhf/labeling/reliability.py) should rank the labelers like their
known accuracy (Spearman), (b) training the reward model on `rlhf label export --weight reliability` should raise
its held-out accuracy toward the Bayes limit, compared with the same pairs unweighted.

    .venv/bin/rlhf demo --out runs/demo        # once: the SFT model and RUN/samples.jsonl (K responses per prompt)
    .venv/bin/python benchmarks/labeler_reliability.py --run runs/demo --out /tmp/h3/reliability --seeds 0,1,2

Per seed, in OUT/seed-N/ (the CLI steps it runs, in Python):
    rlhf label simulate --db labels.db --samples RUN/samples.jsonl --kind ranking --overlap 3 --labelers 6 \\
        --beta 10,5,2.5,1,5,5 --flip 0,0,0,0,0.5,0.8 --heldout 0.2 --seed N --mix-order
    rlhf label export --db labels.db --out plain.jsonl
    rlhf label export --db labels.db --out weighted.jsonl --weight reliability
    rlhf reward --model RUN/sft --data plain.jsonl    --norm_samples RUN/samples.jsonl --out rm-plain \
        --epochs 2 --lr 3e-4 --batch_size 32 --eval_every 20 --seed N          (the demo's RM settings)
    rlhf reward ... --data weighted.jsonl --out rm-weighted                     (the same)
Both reward models see the same pairs, the same held-out rows (split=heldout, 20% of tasks) and the same seed; only
the per-pair weight differs. Each model is also scored against the gold judge's order on the held-out pairs (the
truth the weights aim at, rather than the noisy held-out labels). Both train the full 2 epochs (no early stopping,
see --early-stopping) and the final model is evaluated. The known accuracy of a labeler is the mean, over the
comparisons it answered, of the probability that its vote follows the gold judge's order (from its beta and flip).
Resumable: a finished reward model (its eval.json) is not trained again. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho with average ranks for ties."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy)


def known_accuracy(store: Any, labelers: list[Any], judge: Any) -> dict[str, float]:
    from rlhf.labeling.export import collect_votes

    tasks = {t.id: t for t in store.tasks()}
    votes = collect_votes(store.judgments(current_only=True), tasks)
    by = {lab.name: lab for lab in labelers}
    acc: dict[str, list[float]] = {n: [] for n in by}
    cache: dict[str, float] = {}
    score = lambda t: cache.setdefault(t, float(judge(t)))  # noqa: E731
    for (tid, i, k), vs in votes.items():
        task = tasks[tid]
        a, b = task.responses[i], task.responses[k]
        ga, gb = score(a), score(b)
        if ga == gb:
            continue
        for v in vs:
            if v.user in by:
                p_a = by[v.user].vote_probs(task.kind, ga, gb, a, b)[0]
                acc[v.user].append(p_a if ga > gb else 1 - p_a)
    return {n: statistics.mean(x) for n, x in acc.items() if x}


def gold_order_accuracy(rm: Path, data: Path, judge: Any) -> tuple[float, int]:
    """The reward model's accuracy on the held-out pairs against the gold judge's order (not the noisy labels):
    how close it came to the truth. Pairs whose gold scores are equal are left out."""
    import torch
    from transformers import AutoTokenizer

    from rlhf.models.reward import encode_prompt, encode_response, load_reward_model

    model = load_reward_model(rm).eval()
    tok = AutoTokenizer.from_pretrained(str(rm))
    right = n = 0
    with torch.no_grad():
        for line in data.read_text().splitlines():
            row = json.loads(line)
            if row.get("split") != "heldout":
                continue
            g_c, g_r = float(judge(row["chosen"])), float(judge(row["rejected"]))
            if g_c == g_r:
                continue
            scores = []
            for key in ("chosen", "rejected"):
                ids = encode_prompt(tok, row["prompt"]) + encode_response(tok, row[key], row.get(f"{key}_ended", True),
                                                                         prompt=row["prompt"])
                t = torch.tensor([ids])
                scores.append(float(model(t, torch.ones_like(t))[0][0]))
            right += (scores[0] > scores[1]) == (g_c > g_r)
            n += 1
    return right / n, n


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from rlhf.labeling.cli import read_samples
    from rlhf.labeling.export import export
    from rlhf.labeling.reliability import estimate
    from rlhf.labeling.simulate import SimLabeler, load_judge, simulate
    from rlhf.labeling.store import Store
    from rlhf.stages import reward

    run, out = Path(args.run), Path(args.out) / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    betas = [float(b) for b in args.beta.split(",")]
    flips = [float(f) for f in args.flip.split(",")]
    labelers = [SimLabeler(f"sim-{n + 1}", beta=betas[n % len(betas)], flip=flips[n % len(flips)])
                for n in range(args.labelers)]
    judge = load_judge("rlhf.data.gold:gold_score")
    db = out / "labels.db"
    store = Store(str(db))
    if not store.judgments():
        specs, errors, _ = read_samples(run / "samples.jsonl", "ranking", args.overlap, "disjoint")
        if errors:
            raise SystemExit(f"bad rows in {run / 'samples.jsonl'}: {errors[0]}")
        store.add_tasks(specs)
        simulate(store, labelers, judge, judge_name="rlhf.data.gold:gold_score", heldout_fraction=0.2, seed=seed,
                 mix_order=not args.fixed_order)
    known = known_accuracy(store, labelers, judge)
    rel = estimate({t.id: t for t in store.tasks()}, store.judgments(current_only=True))
    names = sorted(known)
    est = {n: rel.labelers[n].accuracy for n in names}
    rho = spearman([est[n] for n in names], [known[n] for n in names])

    result: dict[str, Any] = {"seed": seed, "spearman": rho,
                              "labelers": {n: {"beta": next(lab.beta for lab in labelers if lab.name == n),
                                               "flip": next(lab.flip for lab in labelers if lab.name == n),
                                               "known_accuracy": known[n], "estimated_accuracy": est[n]}
                                           for n in names}}  # fmt: skip
    for variant, weight in (("plain", "none"), ("weighted", "reliability")):
        data = out / f"{variant}.jsonl"
        meta = export(store, data, weight=weight)
        rm = out / f"rm-{variant}"
        if not (rm / "eval.json").exists():
            reward.run(reward.RewardConfig(
                model=str(run / "sft"), data=str(data), norm_samples=str(run / "samples.jsonl"), out=str(rm),
                epochs=args.rm_epochs, batch_size=32, lr=args.rm_lr, eval_every=20, save_every=100, seed=seed,
                early_stopping=args.early_stopping, early_stopping_patience=3, device="cpu"))  # fmt: skip
        ev = json.loads((rm / "eval.json").read_text())
        gold_acc, gold_pairs = gold_order_accuracy(rm, data, judge)
        result[variant] = {"rm_accuracy": ev["eval/rm_accuracy"], "rm_pairs": ev["eval/rm_pairs"],
                           "pairs": meta["counts"]["pairs"], "gold_order_accuracy": gold_acc,
                           "gold_order_pairs": gold_pairs}
        result["bayes_accuracy"] = ev["eval/rm_bayes_accuracy"]
        if weight == "reliability":
            result[variant] |= {"mean_weight": meta["reliability"]["mean_weight"],
                                "pairs_weight_0": meta["reliability"]["pairs_against_posterior"]}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished `rlhf demo` folder (sft/, samples.jsonl)")
    ap.add_argument("--out", required=True, help="output folder (e.g. /tmp/h3/reliability)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--labelers", type=int, default=6)
    ap.add_argument("--beta", default="10,5,2.5,1,5,5")
    ap.add_argument("--flip", default="0,0,0,0,0.5,0.8")
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--rm-epochs", type=float, default=2.0, help="the demo's (default preset)")
    ap.add_argument("--rm-lr", type=float, default=3e-4, help="the demo's (default preset)")
    ap.add_argument("--fixed-order", action="store_true", help="simulate without --mix-order: the same labelers share "
                    "every task (two groups that never meet, with 6 labelers and overlap 3)")
    ap.add_argument("--early-stopping", action="store_true",
                    help="the demo's early stopping on the held-out loss (off by default: the held-out labels are "
                    "the noisy consensus, and a model trained toward the truth by the weights is judged less "
                    "calibrated to them, so selecting on that loss penalises exactly what weighting buys; both "
                    "variants then train the same number of steps and the final model is evaluated)")
    args = ap.parse_args()
    results = [run_seed(args, int(s)) for s in args.seeds.split(",")]

    print("| seed | Spearman (estimated vs known accuracy) | RM held-out accuracy: unweighted | weighted | Bayes limit "
          "| vs gold order: unweighted | weighted |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['seed']} | {r['spearman']:.3f} | {r['plain']['rm_accuracy']:.4f} | "
              f"{r['weighted']['rm_accuracy']:.4f} | {r['bayes_accuracy']:.4f} | "
              f"{r['plain']['gold_order_accuracy']:.4f} | {r['weighted']['gold_order_accuracy']:.4f} |")
    print("\n| labeler | beta | flip | known accuracy | estimated (seed " + str(results[0]["seed"]) + ") |")
    print("|---|---|---|---|---|")
    for n, d in results[0]["labelers"].items():
        print(f"| {n} | {d['beta']:g} | {d['flip']:g} | {d['known_accuracy']:.3f} | {d['estimated_accuracy']:.3f} |")
    summary = {
        "benchmark": "labeler_reliability", "run": args.run, "labelers": args.labelers, "beta": args.beta,
        "flip": args.flip, "overlap": args.overlap, "fixed_order": args.fixed_order,
        "early_stopping": args.early_stopping, "seeds": [r["seed"] for r in results],
        "spearman": [r["spearman"] for r in results],
        "rm_accuracy_plain": [r["plain"]["rm_accuracy"] for r in results],
        "rm_accuracy_weighted": [r["weighted"]["rm_accuracy"] for r in results],
        "bayes_accuracy": [r["bayes_accuracy"] for r in results],
        "gold_order_accuracy_plain": [r["plain"]["gold_order_accuracy"] for r in results],
        "gold_order_accuracy_weighted": [r["weighted"]["gold_order_accuracy"] for r in results],
        "mean_gain": statistics.mean(r["weighted"]["rm_accuracy"] - r["plain"]["rm_accuracy"] for r in results),
        "per_seed": results,
    }  # fmt: skip
    (Path(args.out) / "labeler_reliability.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
