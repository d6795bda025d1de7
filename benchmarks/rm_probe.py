"""Probe a reward model on the demo task: its mean normalised score for hand-written kinds of response (short and
long positive, a list of positive words, neutral, short and long negative) after the same held-out prompts, beside
the gold judge's score of each kind. It shows which axis a reward model learned from its preferences: the gold judge
(VADER's compound score) grows with the number of positive words, so a reward model that learned only "negative or
not" scores short positives at least as high as long ones, and PPO then shortens its responses.

    .venv/bin/python benchmarks/rm_probe.py --reward runs/smollm2/reward --prompts runs/smollm2/data/chat/prompts_heldout.jsonl

Prompts are the demo's (plain strings or chat messages); each response is encoded as PPO's rollouts are (prompt, the
response, EOS). The last line printed is one JSON object: {kind: {"reward", "gold", "tokens"}} and "order_agrees",
whether the reward model orders the kinds' means as the gold judge does (Kendall's tau over the six kinds).
"""

from __future__ import annotations

import argparse
import json
import statistics

KINDS: dict[str, list[str]] = {
    "short_positive": ["wonderful.", "It was really great.", "I loved it.", "absolutely amazing.", "It was fantastic."],
    "long_positive": ["I loved it. The quality was excellent and it works beautifully.",
                      "it was fantastic. The whole package was great and I am very happy with it.",
                      "It is a wonderful product. I love it and would happily recommend it to my friends.",
                      "it turned out to be excellent. Everything about it is great and the price was fair."],
    "positive_list": ["great, wonderful, amazing, excellent and perfect.",
                      "It was great! Wonderful! Amazing! Excellent!"],
    "neutral": ["it arrived on Tuesday.", "It is a product that I used for a week."],
    "short_negative": ["it was terrible.", "I hated it."],
    "long_negative": ["it broke after two days. The quality is awful and the support was useless.",
                      "It was a huge disappointment. I regret buying it and would not recommend it."],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward", required=True, help="a folder written by rlhf reward")
    ap.add_argument("--prompts", required=True, help="prompts JSONL ({prompt} rows), e.g. RUN/data/chat/prompts_heldout.jsonl")
    ap.add_argument("--n_prompts", type=int, default=24)
    a = ap.parse_args()

    import torch

    from rlhf.data.gold import gold_score
    from rlhf.io import read_jsonl
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import encode_prompt, encode_response, load_reward_model

    rm, tok = load_reward_model(a.reward), load_tokenizer(a.reward)
    prompts = [r["prompt"] for r in read_jsonl(a.prompts, required=("prompt",))][: a.n_prompts]
    result = {}
    with torch.no_grad():
        for kind, responses in KINDS.items():
            scores = []
            for p in prompts:
                for r in responses:
                    ids = torch.tensor([encode_prompt(tok, p) + encode_response(tok, r, True, prompt=p)])
                    scores.append(float(rm(ids, torch.ones_like(ids))[0][0]))
            result[kind] = {"reward": round(statistics.mean(scores), 4),
                            "gold": round(statistics.mean(gold_score(r) for r in responses), 4),
                            "tokens": round(statistics.mean(len(tok(r, add_special_tokens=False)["input_ids"])
                                                            for r in responses), 1)}
            print(f"{kind:15s} reward {result[kind]['reward']:+.3f}  gold {result[kind]['gold']:+.3f}  "
                  f"tokens {result[kind]['tokens']:.1f}")
    kinds = list(result)
    concordant = discordant = 0
    for i in range(len(kinds)):
        for j in range(i + 1, len(kinds)):
            s = ((result[kinds[i]]["reward"] - result[kinds[j]]["reward"])
                 * (result[kinds[i]]["gold"] - result[kinds[j]]["gold"]))
            concordant, discordant = concordant + (s > 0), discordant + (s < 0)
    tau = (concordant - discordant) / (concordant + discordant)
    print(json.dumps({"bench": "rm_probe", "reward": a.reward, "prompts": len(prompts), "kinds": result,
                      "kendall_tau": round(tau, 3), "order_agrees": tau == 1.0}))


if __name__ == "__main__":
    main()
