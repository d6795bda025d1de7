"""`rlhf eval` on tiny real models: a model against itself ties exactly with zero KL, a different policy has a
positive KL, and the statistics (Wilson interval, distinct-n, self-overlap) match hand-computed values."""

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rlhf.errors import UserError
from rlhf.io import write_jsonl
from rlhf.stages import evaluate as ev

PROMPTS = ["the hotel", "this film", "the staff", "i bought", "the food", "a boring"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """RUN/ppo: a 'trained' policy with the base's weights and a PPO config.yaml naming the base as its policy;
    RUN/reward: a scalar-head model with an eval.json; sharp/: the base with a 10x sharper LM head (a policy that
    moved away from the reference); RUN/data/prompts_heldout.jsonl."""
    from rlhf.models.loading import default_head_std, load_scalar_model
    from rlhf.models.registry import build_tiny_causal_lm

    d = tmp_path_factory.mktemp("eval")
    run = d / "run"
    base_model = build_tiny_causal_lm("tiny", tokenizer, seed=0)
    for folder in (d / "base", run / "ppo"):
        base_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    (run / "ppo" / "config.yaml").write_text(yaml.safe_dump(
        {"policy": str(d / "base"), "ref": "", "reward": str(run / "reward"), "kl_coef": 0.05, "temperature": 0.9,
         "max_new_tokens": 6}))
    sharp = build_tiny_causal_lm("tiny", tokenizer, seed=0)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(10.0)
    sharp.save_pretrained(d / "sharp")
    tokenizer.save_pretrained(d / "sharp")
    torch.manual_seed(0)
    rm = load_scalar_model(d / "base", init_head_std=default_head_std(base_model))
    rm.save_pretrained(run / "reward")
    tokenizer.save_pretrained(run / "reward")
    (run / "reward" / "eval.json").write_text(json.dumps({"eval/rm_accuracy": 0.75, "eval/rm_bayes_accuracy": 0.8}))
    write_jsonl(run / "data" / "prompts_heldout.jsonl",
                [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    return {"dir": d, "run": run, "base": d / "base", "sharp": d / "sharp"}


def _read(out):
    report = json.loads((Path(out) / "eval.json").read_text())
    rows = [json.loads(x) for x in (Path(out) / "samples.jsonl").read_text().splitlines()]
    return report, rows


def test_model_against_itself_ties_exactly_and_defaults_come_from_the_ppo_run(setup):
    run = setup["run"]
    out = ev.run(ev.EvalConfig(policy=str(run / "ppo"), reward=str(run / "reward"), gold="demo",
                               samples_per_prompt=2, device="cpu"))
    assert out == run / "eval"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["baseline"] == str(setup["base"]) and resolved["ref"] == str(setup["base"])
    assert resolved["prompts"] == str(run / "data" / "prompts_heldout.jsonl")
    assert resolved["temperature"] == 0.9 and resolved["max_new_tokens"] == 6
    report, rows = _read(out)
    n = len(PROMPTS) * 2
    # same weights, same seeds: the same responses, so every judge ties on every pair and the KL is exactly 0
    assert report["win_rate"] == {"reward": 0.5, "gold": 0.5, "textblob": 0.5}
    assert report["ties"] == {"reward": n, "gold": n, "textblob": n}
    assert report["kl"] == 0.0 and report["kl_k3"] == 0.0
    assert report["reward"]["policy"] == report["reward"]["baseline"]
    assert report["rm"] == {"accuracy": 0.75, "bayes_accuracy": 0.8, "source": str(run / "reward" / "eval.json")}
    assert report["n"] == {"prompts": len(PROMPTS), "samples_per_prompt": 2, "pairs": n}
    assert len(rows) == n and all(r["policy"] == r["baseline"] for r in rows)
    # the two samples of one prompt differ (different seeds within the chunk), so the pairing is not trivial
    assert any(a["policy"] != b["policy"] for a, b in zip(rows[::2], rows[1::2]))
    assert (out / "summary.json").exists()


def test_eval_json_has_every_required_key_with_its_type(setup):
    report, rows = _read(setup["run"] / "eval")  # written by the test above (module order)
    for key in ("gold", "reward", "length", "textblob", "eos_rate"):
        assert set(report[key]) == {"baseline", "policy"}, key
        assert all(isinstance(v, float) for v in report[key].values()), key
    assert isinstance(report["kl"], float) and isinstance(report["kl_std"], float)
    assert set(report["win_rate"]) >= {"gold", "reward"}
    assert all(isinstance(v, float) for v in report["win_rate"].values())
    assert all(len(ci) == 2 and ci[0] <= 0.5 <= ci[1] for ci in report["win_rate_ci95"].values())
    assert isinstance(report["rm"]["accuracy"], float) and isinstance(report["rm"]["bayes_accuracy"], float)
    for side in ("baseline", "policy"):
        assert set(report["diversity"][side]) == {"distinct1", "distinct2", "self_overlap4"}
    for key in ("prompt_id", "prompt", "baseline", "policy", "baseline_gold", "policy_gold", "baseline_reward",
                "policy_reward", "baseline_textblob", "policy_textblob", "baseline_length", "policy_length",
                "baseline_ended", "policy_ended", "policy_kl"):
        assert key in rows[0], key
    # the summary numbers are the means of the per-pair rows
    assert report["reward"]["policy"] == pytest.approx(sum(r["policy_reward"] for r in rows) / len(rows))
    assert report["length"]["baseline"] == pytest.approx(sum(r["baseline_length"] for r in rows) / len(rows))
    assert report["kl"] == pytest.approx(sum(r["policy_kl"] for r in rows) / len(rows))


def test_a_different_policy_has_positive_kl_and_labeling_tasks_hide_the_order(setup, tmp_path):
    from rlhf.labeling.store import Store

    run = setup["run"]
    db = tmp_path / "eval_labels.db"
    out = ev.run(ev.EvalConfig(policy=str(setup["sharp"]), baseline=str(setup["base"]), reward=str(run / "reward"),
                               prompts=str(run / "data" / "prompts_heldout.jsonl"), out=str(tmp_path / "e"),
                               samples_per_prompt=2, max_new_tokens=8, gold="", device="cpu", label_db=str(db)))
    report, rows = _read(out)
    # sampled k1 estimates are noisy per sequence, but KL(pi || ref) >= 0: a 10x sharper head is clearly positive
    assert report["kl"] > 0.5 and report["kl_k3"] > 0
    assert report["models"]["ref"] == str(setup["base"])  # no PPO run to name a reference: the baseline
    assert report["gold"] == {"baseline": None, "policy": None} and report["win_rate"]["gold"] is None
    assert all(r["policy_gold"] is None for r in rows)
    outcomes = [0.5 if r["policy"] == r["baseline"] else float(r["policy_reward"] > r["baseline_reward"])
                for r in rows]
    assert report["win_rate"]["reward"] == pytest.approx(sum(outcomes) / len(outcomes))
    assert report["rm"]["accuracy"] == 0.75  # found in --reward without --reward_summary

    store = Store(db)
    tasks = store.tasks()
    store.close()
    differing = [r for r in rows if r["policy"] != r["baseline"]]
    assert len(tasks) == len(differing) == report["labeling"]["tasks_added"] > 1
    by_key = {(r["prompt_id"], r["sample"]): r for r in rows}
    orders = set()
    for t in tasks:
        assert t.kind == "pairwise" and t.source["purpose"] == "eval"
        r = by_key[(t.source["prompt_id"], t.source["sample"])]
        assert [r[who] for who in t.source["order"]] == t.responses  # the recorded order says who wrote which
        orders.add(tuple(t.source["order"]))
    assert len(orders) == 2  # both orders occur: the labeler cannot tell the policy by its position


def test_sequence_kl_matches_a_naive_loop(tokenizer):
    from rlhf.models.generation import generate, left_pad
    from rlhf.models.registry import build_tiny_causal_lm

    policy = build_tiny_causal_lm("tiny", tokenizer, seed=1).eval()
    ref = build_tiny_causal_lm("tiny", tokenizer, seed=2).eval()
    prompts = [tokenizer(p)["input_ids"] for p in ("the hotel was", "a", "this film")]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    torch.manual_seed(0)
    batch = generate(policy, ids, mask, max_new_tokens=5, temperature=0.7, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    k1, k3 = ev.sequence_kl(policy, ref, batch, 0.7)
    for b, prompt in enumerate(prompts):
        response = batch.response_ids[b][batch.response_mask[b]].tolist()
        seq = torch.tensor([prompt + response])  # no padding at all
        with torch.no_grad():
            lp = [torch.log_softmax(m(seq).logits[0] / 0.7, -1) for m in (policy, ref)]
        d = [float(lp[0][len(prompt) - 1 + t, tok] - lp[1][len(prompt) - 1 + t, tok]) for t, tok in enumerate(response)]
        assert float(k1[b]) == pytest.approx(sum(d), abs=1e-4)
        assert float(k3[b]) == pytest.approx(sum(torch.expm1(-torch.tensor(x)).item() + x for x in d), abs=1e-4)


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), table I / the usual textbook examples, z = 1.96
    assert ev.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert ev.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    # hand-computed: p = 0.5, n = 4: centre 0.5, half = 1.96/1.9604 * sqrt(0.0625 + 0.0600) = 0.3498
    assert ev.wilson_interval(2, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    # a tie counts half: 3 wins + 2 ties of 6 is the interval of 4 successes in 6
    assert ev.wilson_interval(sum(ev.pair_outcomes([2, 2, 2, 1, 1, 0], [1, 1, 1, 1, 1, 1], [False] * 6)), 6) == \
        ev.wilson_interval(4, 6)


def test_pair_outcomes_count_ties_and_identical_texts_as_half():
    assert ev.pair_outcomes([1.0, 0.0, 0.5, 0.3], [0.0, 1.0, 0.5, 0.2], [False, False, False, True]) == \
        [1.0, 0.0, 0.5, 0.5]


def test_distinct_n_hand_computed():
    texts = ["A b, a b.", "a c"]  # words: a b a b | a c
    assert ev.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert ev.distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) (b a) (a b) (a c)
    assert ev.distinct_n(["one"], 2) == 0.0


def test_self_overlap_hand_computed_and_against_a_pairwise_loop():
    # bigram sets {the cat, cat sat}, {the cat, cat ran}, {a dog}: 1/2 and 0 for the first two texts, 0 for the third
    assert ev.self_overlap(["the cat sat", "the cat ran", "a dog"], n=2) == pytest.approx((0.25 + 0.25 + 0) / 3)
    assert ev.self_overlap(["same words here again"] * 3, n=4) == 1.0
    assert ev.self_overlap(["one two three four", "five six seven eight"], n=4) == 0.0
    assert ev.self_overlap(["only text here ok"], n=4) is None
    assert ev.self_overlap(["too short", "also short"], n=4) is None

    def naive(texts, n):
        sets = [set(ev.ngrams(ev.words(t), n)) for t in texts]
        vals = [len(a & b) / len(a) for (i, a), (j, b) in itertools.product(enumerate(sets), repeat=2) if i != j and a]
        return sum(vals) / len(vals)

    rng = random.Random(0)
    vocab = ["good", "bad", "film", "the", "was", "very"]
    for _ in range(20):
        texts = [" ".join(rng.choices(vocab, k=rng.randint(0, 8))) for _ in range(rng.randint(2, 6))]
        texts.append("the film was very good")  # at least one text has 4-grams
        assert ev.self_overlap(texts, 4) == pytest.approx(naive(texts, 4))


@pytest.mark.parametrize("content, message", [(None, "file not found"), ("", "no rows"), ("\n\n", "no rows"),
                                              ('{"prompt": "  "}\n', "row 1: field 'prompt' is empty")])
def test_bad_prompt_files_are_one_line_user_errors(setup, tmp_path, content, message):
    prompts = tmp_path / "prompts.jsonl"
    if content is not None:
        prompts.write_text(content)
    cfg = ev.EvalConfig(policy=str(setup["run"] / "ppo"), reward=str(setup["run"] / "reward"), prompts=str(prompts),
                        out=str(tmp_path / "e"), device="cpu")
    with pytest.raises(UserError) as e:
        ev.run(cfg)
    assert message in str(e.value) and str(prompts) in str(e.value) and "\n" not in str(e.value)


def test_unknown_baseline_and_bad_fields_are_user_errors(setup, tmp_path):
    with pytest.raises(UserError, match="pass --baseline"):
        ev.run(ev.EvalConfig(policy=str(setup["sharp"]), reward=str(setup["run"] / "reward"), out=str(tmp_path)))
    with pytest.raises(UserError, match="config field 'samples_per_prompt'"):
        ev.EvalConfig(policy="p", reward="r", samples_per_prompt=0).validate()
    with pytest.raises(UserError, match="config field 'gold'"):
        ev.EvalConfig(policy="p", reward="r", gold="vader").validate()
    moved = tmp_path / "ppo"
    shutil.copytree(setup["run"] / "ppo", moved)
    (moved / "config.yaml").write_text(yaml.safe_dump({"policy": "runs/elsewhere/sft", "kl_coef": 0.05}))
    with pytest.raises(UserError, match="does not exist from here"):
        ev.run(ev.EvalConfig(policy=str(moved), reward=str(setup["run"] / "reward"), prompts="x.jsonl",
                             out=str(tmp_path / "e")))


@pytest.mark.parametrize("kind", ["grpo", "rloo", "reinforce_pp", "dpo"])
def test_defaults_come_from_the_training_run_of_any_algorithm(tmp_path, kind):
    """--policy may be any algorithm's output folder: eval reads its kind and config through rlhf.artifacts (a GRPO
    folder logs no value/* names and a DPO config names no kl_coef, so neither looks like today's PPO config)."""
    from rlhf.artifacts import write_summary

    run = tmp_path / "run"
    write_jsonl(run / "data" / "prompts_heldout.jsonl", [{"prompt_id": "p0", "prompt": "the hotel"}])
    folder = run / kind
    folder.mkdir()
    if kind == "dpo":  # offline: no sampling settings of its own
        config = {"model": str(tmp_path / "sft"), "ref": "", "data": "prefs.jsonl", "beta": 0.1}
    else:
        config = {"policy": str(tmp_path / "sft"), "ref": "", "reward": "r", "temperature": 0.8, "max_new_tokens": 9}
    (tmp_path / "sft").mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    write_summary(folder, {}, kind=kind)
    cfg = ev.resolve(ev.EvalConfig(policy=str(folder), reward="r"))
    assert (cfg.baseline, cfg.ref, cfg.out) == (str(tmp_path / "sft"), str(tmp_path / "sft"), str(run / "eval"))
    if kind == "dpo":
        assert (cfg.temperature, cfg.max_new_tokens) == (ev.DEFAULT_TEMPERATURE, ev.DEFAULT_MAX_NEW_TOKENS)
    else:
        assert (cfg.temperature, cfg.max_new_tokens) == (0.8, 9)
    # an SFT folder is no training run: its `model` is not a baseline
    sft = run / "sft"
    sft.mkdir()
    (sft / "config.yaml").write_text(yaml.safe_dump({"model": "tiny:tiny", "max_steps": 3}))
    write_summary(sft, {}, kind="sft")
    with pytest.raises(UserError, match="pass --baseline"):
        ev.resolve(ev.EvalConfig(policy=str(sft), reward="r"))
