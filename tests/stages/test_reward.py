"""Reward-model stage: learning on a synthetic property, k-wise batching, normalisation, calibration, bad inputs,
plain-transformers loading, resume, ensembles, LoRA."""

import json
import logging
import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rlhf.cli import main
from rlhf.core import pairwise_loss
from rlhf.errors import UserError
from rlhf.io import write_jsonl
from rlhf.models.loading import load_scalar_model
from rlhf.models.reward import LastTokenScorer, encode_prompt, encode_response, load_reward_model
from rlhf.models.scalar import shared_prefix_layout
from rlhf.stages import reward
from tests.stages.reward_data import pair_rows, ranking_rows, sample_rows, save_base_model
from tests.support.runs import crash_after_checkpoints

BAD_ROWS = [
    {"prompt": "the hotel", "chosen": " was clean.", "rejected": " was clean."},  # identical
    {"prompt": "the hotel", "chosen": " ", "rejected": " was slow."},  # empty response
    {"prompt": "the hotel", "chosen": " was great." * 40, "rejected": " was slow."},  # longer than max_length 96
    {"prompt": "the hotel", "chosen": " was great.", "rejected": " was slow.", "tie": True},  # tie, ties: skip
]


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    return save_base_model(tokenizer, tmp_path_factory.mktemp("sft"))


def _cfg(base, data, out, **kw):
    values = dict(model=str(base), data=str(data), out=str(out), batch_size=16, lr=3e-3, warmup_steps=2,
                  eval_every=5, log_every=5, save_every=0, max_length=96, device="cpu", seed=0)
    values.update(kw)
    return reward.RewardConfig(**values)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """One real run through the CLI: 240 pairs + 4 bad rows, normalised on `rlhf sample`-style rows."""
    d = tmp_path_factory.mktemp("rm")
    write_jsonl(d / "prefs.jsonl", pair_rows(240, seed=0) + BAD_ROWS)
    write_jsonl(d / "samples.jsonl", sample_rows(60, 4, seed=1))
    argv = ["reward", "--model", str(base), "--data", str(d / "prefs.jsonl"), "--out", str(d / "out"),
            "--norm_samples", str(d / "samples.jsonl"), "--batch_size", "16", "--lr", "3e-3", "--warmup_steps", "2",
            "--eval_every", "5", "--log_every", "5", "--max_length", "96", "--device", "cpu"]
    assert main(argv) == 0
    return d


def _metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_learns_the_preferred_property_and_reports(trained):
    out = trained / "out"
    rows = _metrics(out)
    evals = [r for r in rows if "eval/rm_accuracy" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == rows[-1]["step"]
    assert evals[-1]["eval/rm_accuracy"] >= 0.9
    assert evals[-1]["eval/rm_loss"] < evals[0]["eval/rm_loss"] / 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/rm_accuracy"] >= 0.9 and summary["eval_pairs"] == 24  # 10% of 240 single-pair groups
    assert summary["train_pairs"] == 216
    # every bad row is counted under its reason, none silently lost
    assert summary["skipped"]["data"] == {"chosen and rejected are identical (no preference to learn)": 1,
                                          "empty chosen or rejected response": 1, "tie (ties: skip)": 1,
                                          "longer than max_length=96 tokens (prompt+response; raise --max_length up "
                                          "to the model's context)": 1}
    ev = json.loads((out / "eval.json").read_text())
    assert ev["eval/rm_accuracy"] == summary["eval/rm_accuracy"] and ev["by_agreement"]["1"]["pairs"] == 24
    assert "eval/rm_bayes_accuracy" not in ev  # no sidecar, no --bayes_accuracy


def test_logged_names_are_defined_in_docs_metrics(trained):
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    section = doc.split("## Reward model")[1].split("\n## ")[0] + doc.split("## Common")[1].split("\n## ")[0]
    names = {n for n in (line.split("`")[1] for line in section.splitlines() if line.startswith("| `"))}
    logged = {k for r in _metrics(trained / "out") for k in r}
    assert logged <= names, logged - names
    assert {"rm/loss", "rm/accuracy", "rm/margin_mean", "rm/reward_mean", "rm/lr", "rm/grad_norm",
            "eval/rm_loss", "eval/rm_accuracy", "eval/rm_ece"} <= logged


def _score_texts(rm, tokenizer, prompts, responses):
    seqs = [encode_prompt(tokenizer, p) + encode_response(tokenizer, r) for p, r in zip(prompts, responses)]
    n = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    with torch.no_grad():
        return rm(ids, mask)


def test_normalisation_mean0_std1_on_the_norm_set_and_on_fresh_samples(trained, tokenizer):
    rm = load_reward_model(trained / "out")
    rc = json.loads((trained / "out" / "reward_config.json").read_text())
    assert rc["n"] == 240 and rc["source"].startswith("samples ") and rm.gain == rc["gain"] and rm.bias == rc["bias"]
    norm = [json.loads(x) for x in (trained / "samples.jsonl").read_text().splitlines()]
    score, _ = _score_texts(rm, tokenizer, [r["prompt"] for r in norm for _ in r["responses"]],
                            [x for r in norm for x in r["responses"]])
    assert abs(score.mean().item()) < 1e-4 and abs(score.std(unbiased=False).item() - 1) < 1e-4
    fresh = sample_rows(100, 4, seed=123)  # same distribution, other samples
    score, members = _score_texts(rm, tokenizer, [r["prompt"] for r in fresh for _ in r["responses"]],
                                  [x for r in fresh for x in r["responses"]])
    assert members.shape == (1, 400)
    assert abs(score.mean().item()) < 0.2 and 0.8 < score.std().item() < 1.2


def test_reward_model_reads_the_last_real_token_under_any_padding(trained, tokenizer):
    rm = load_reward_model(trained / "out")
    prompts, responses = ["the hotel", "a book with a weak plot"], [" was great.", " and it broke."]
    alone = [float(_score_texts(rm, tokenizer, [p], [r])[0]) for p, r in zip(prompts, responses)]
    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    r_ids = [encode_response(tokenizer, r) for r in responses]
    P, R, pad = max(map(len, p_ids)), max(map(len, r_ids)) + 2, tokenizer.pad_token_id
    # [left-padded prompt | right-padded response]: zeros at both ends of the mask
    ids = torch.tensor([[pad] * (P - len(p)) + p + r + [pad] * (R - len(r)) for p, r in zip(p_ids, r_ids)])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (R - len(r))
                         for p, r in zip(p_ids, r_ids)])
    # [right-padded prompt | right-padded response]: zeros in the middle of the mask
    ids2 = torch.tensor([p + [pad] * (P - len(p)) + r + [pad] * (R - len(r)) for p, r in zip(p_ids, r_ids)])
    mask2 = torch.tensor([[1] * len(p) + [0] * (P - len(p)) + [1] * len(r) + [0] * (R - len(r))
                          for p, r in zip(p_ids, r_ids)])
    with torch.no_grad():
        for i, m in ((ids, mask), (ids2, mask2)):
            assert torch.allclose(rm(i, m)[0], torch.tensor(alone), atol=1e-4)


def test_saved_folder_gives_the_same_raw_score_in_plain_transformers(trained, tokenizer):
    path = str(trained / "out")
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({path!r})\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({path!r})\n"
        "ids = t('the hotel')['input_ids'] + t(' was great.', add_special_tokens=False)['input_ids']\n"
        "ids = ids + [t.eos_token_id]\n"
        "with torch.no_grad(): s = m(torch.tensor([ids])).logits[0, 0].item()\n"
        "print(json.dumps({'rlhf': 'rlhf' in sys.modules, 'score': s, 'labels': m.config.num_labels}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["rlhf"] is False and got["labels"] == 1
    rm = load_reward_model(path)
    ids = torch.tensor([encode_prompt(tokenizer, "the hotel") + encode_response(tokenizer, " was great.")])
    with torch.no_grad():
        raw = rm.raw_scores(ids, torch.ones_like(ids))[0, 0].item()
    assert abs(raw - got["score"]) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# k-wise rankings: same loss and gradients as the explicit pairs, one forward per distinct response


def test_kwise_batch_equals_explicit_pairs_and_forwards_each_response_once(base, tokenizer):
    table = reward.SequenceTable(tokenizer, 128)
    rows = ranking_rows(2, k=4, seed=0)
    for i, r in enumerate(rows):
        r["margin"] = 0.25 * (i % 3)
    pairs = [reward.parse_row(r, f"x:{i}", table, "skip") for i, r in enumerate(rows)]
    assert len(pairs) == 12 and len(table.seqs) == 8

    model = load_scalar_model(base, init_head_std=0.3)
    scorer = LastTokenScorer(model)
    rows_forwarded = []
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: rows_forwarded.append(i[0].shape[0]))

    for use_margin in (False, True):
        model.zero_grad()
        rows_forwarded.clear()
        [batch] = reward.group_batches(pairs, batch_size=12)
        b = reward.collate_pairs(batch, table, tokenizer.pad_token_id)
        loss, _ = reward.preference_loss(scorer(b["input_ids"], b["attention_mask"]), b, use_margin=use_margin)
        loss.backward()
        assert rows_forwarded == [8]  # 12 pairs of 2 rankings of 4: one row per distinct response
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}

        # the naive path: each pair's two responses forwarded on their own, unpadded
        model.zero_grad()
        rows_forwarded.clear()
        ids = [torch.tensor([table.seqs[i]]) for p in pairs for i in (p.chosen, p.rejected)]
        s = torch.stack([scorer(x, torch.ones_like(x))[0] for x in ids])
        margin = torch.tensor([p.margin for p in pairs]) if use_margin else None
        naive, _ = pairwise_loss(s[0::2], s[1::2], margin)
        naive.backward()
        assert len(rows_forwarded) == 24
        assert abs(loss.item() - naive.item()) < 1e-6
        for n, p in model.named_parameters():
            assert torch.allclose(grads[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_shared_prefix_forward_gives_the_same_loss_and_gradients(base, tokenizer):
    """shared_prefix: the prompt of a ranking runs once into a KV cache that each response reuses; the loss and
    every gradient equal the plain forward's, for k-wise rankings and plain pairs of different prompt lengths."""
    table = reward.SequenceTable(tokenizer, 128)
    rows = ranking_rows(2, k=3, seed=1) + pair_rows(3, seed=2)
    pairs = [reward.parse_row(r, f"x:{i}", table, "skip") for i, r in enumerate(rows)]
    model = load_scalar_model(base, init_head_std=0.3).eval()
    scorer = LastTokenScorer(model)
    [batch] = reward.group_batches(pairs, batch_size=len(pairs))
    b = reward.collate_pairs(batch, table, tokenizer.pad_token_id)
    layout = shared_prefix_layout(b["input_ids"], b["attention_mask"], b["group"], min_saving=0.0)
    assert layout is not None and len(set(layout["prefix_len"].tolist())) > 1  # prefixes of different lengths
    results = []
    for lay in (None, layout):
        model.zero_grad()
        loss, _ = reward.preference_loss(scorer(b["input_ids"], b["attention_mask"], lay), b)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, g_plain), (shared, g_shared) = results
    assert abs(plain - shared) < 1e-6
    for n in g_plain:
        torch.testing.assert_close(g_shared[n], g_plain[n], atol=1e-6, rtol=1e-4)
    # a model that does not fill the cache (gradient checkpointing in training) is an error, never a wrong score
    model.train()
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="did not fill its KV cache"):
        scorer(b["input_ids"], b["attention_mask"], layout)
    # no shared token, or too little saved: the plain forward is used
    no_share = torch.tensor([[5, 6, 7], [8, 6, 7]])
    assert shared_prefix_layout(no_share, torch.ones_like(no_share), torch.tensor([0, 0])) is None
    short = torch.tensor([[5, 6, 7, 9, 4, 3], [5, 8, 7, 9, 4, 3]])  # 1 + 2 x 5 of 12 positions: 8% saved
    assert shared_prefix_layout(short, torch.ones_like(short), torch.tensor([0, 0])) is None


def test_shared_prefix_option_trains_the_same_model(base, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", ranking_rows(12, k=3, seed=3))
    kw = dict(max_steps=4, eval_every=100, batch_size=6, lr=1e-3)
    a = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "a", shared_prefix=True, **kw))
    b = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "b", shared_prefix=False, **kw))
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_training_batches_keep_rankings_whole(tokenizer):
    table = reward.SequenceTable(tokenizer, 128)
    rows = ranking_rows(6, k=3, seed=1) + pair_rows(10, seed=2)
    pairs = [reward.parse_row(r, f"x:{i}", table, "skip") for i, r in enumerate(rows)]
    batches = list(zip(range(20), reward.iter_batches(pairs, batch_size=5, seed=0, rank=0, world=1)))
    for _, batch in batches:
        groups = {p.group for p in batch}
        for g in groups:
            assert sum(p.group == g for p in batch) == sum(p.group == g for p in pairs)
        assert len(batch) <= 5
    # an epoch covers every pair exactly once
    epoch = reward.group_batches(pairs, 5, seed=7)
    assert sorted(p.where for b in epoch for p in b) == sorted(p.where for p in pairs)


def test_tie_term_pulls_rewards_together():
    r = torch.tensor([2.0, -1.0, 0.5, 0.5], requires_grad=True)
    batch = {"chosen": torch.tensor([0, 2]), "rejected": torch.tensor([1, 3]), "margin": torch.zeros(2),
             "tie": torch.tensor([True, False])}
    loss, stats = reward.preference_loss(r, batch)
    d_tie, d_pref = 3.0, 0.0
    tie_term = -0.5 * (F.logsigmoid(torch.tensor(d_tie)) + F.logsigmoid(torch.tensor(-d_tie)))
    expected = 0.5 * tie_term + 0.5 * -F.logsigmoid(torch.tensor(d_pref))
    assert abs(loss.item() - expected.item()) < 1e-6 and abs(stats["tie_loss"].item() - tie_term.item()) < 1e-6
    loss.backward()
    assert r.grad[0] > 0 and r.grad[1] < 0  # descent lowers the higher tied reward and raises the lower one
    # the centring term adds coef * mean(r)^2
    loss_c, _ = reward.preference_loss(r.detach(), batch, center_coef=0.5)
    assert abs(loss_c.item() - loss.item() - 0.5 * r.detach().mean().item() ** 2) < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# calibration


def test_ece_matches_hand_computed_values():
    p = torch.tensor([0.05, 0.05, 0.95, 0.55, 0.58])
    y = torch.tensor([0, 1, 1, 0, 1])
    # bin 0: |0.05 - 0.5| * 2/5; bin 9: |0.95 - 1| * 1/5; bin 5: |0.565 - 0.5| * 2/5
    assert abs(reward.expected_calibration_error(p, y) - (0.45 * 0.4 + 0.05 * 0.2 + 0.065 * 0.4)) < 1e-6
    # preferences counted in both orders: p = 0.75, 0.75, 0.15 for the chosen side
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    diff = torch.tensor([logit(0.75), logit(0.75), logit(0.15)])
    # (0.75,1)x2 -> bin 7: 0.25; (0.15,1) -> bin 1: 0.85; (0.25,0)x2 -> bin 2: 0.25; (0.85,0) -> bin 8: 0.85
    assert abs(reward.preference_ece(diff) - (2 * 0.25 + 0.85 + 2 * 0.25 + 0.85) / 6) < 1e-6
    assert reward.preference_ece(torch.tensor([0.0, 0.0])) == pytest.approx(0.0, abs=1e-7)  # 1/2 and a coin flip


def test_eval_metrics_relative_to_bayes_and_breakdown(tokenizer):
    chosen, rejected = torch.tensor([1.0, 2.0, 0.0, 0.5]), torch.tensor([0.0, 3.0, -1.0, 0.0])
    m = reward.eval_metrics(chosen, rejected, bayes=0.8)
    assert m["eval/rm_accuracy"] == 0.75 and m["eval/rm_accuracy_vs_bayes"] == pytest.approx(0.75 / 0.8)
    expected_loss = -F.logsigmoid(chosen - rejected).mean().item()
    assert m["eval/rm_loss"] == pytest.approx(expected_loss)
    P = lambda m_, a: reward.Pair(0, 1, m_, a, False, "g", None, "x")  # noqa: E731
    br = reward.eval_breakdown(chosen - rejected, [P(1.0, 1.0), P(1 / 3, 2 / 3), P(1.0, 1.0), P(None, 2 / 3)])
    assert br["by_margin"] == {"0.333": {"pairs": 1, "accuracy": 0.0}, "1": {"pairs": 2, "accuracy": 1.0},
                               "none": {"pairs": 1, "accuracy": 1.0}}
    assert br["by_agreement"]["0.667"] == {"pairs": 2, "accuracy": 0.5}


# ---------------------------------------------------------------------------------------------------------------
# inputs


def test_bad_rows_give_clear_errors_or_counted_skips(tokenizer, tmp_path):
    table = reward.SequenceTable(tokenizer, 96)
    write_jsonl(tmp_path / "missing.jsonl", [pair_rows(1)[0], {"prompt": "x", "chosen": " a"}])
    with pytest.raises(UserError, match=r"missing\.jsonl:2: field 'rejected' missing"):
        reward.read_pairs(tmp_path / "missing.jsonl", table, "skip")
    write_jsonl(tmp_path / "types.jsonl", [{**pair_rows(1)[0], "margin": "big"}])
    with pytest.raises(UserError, match=r"types\.jsonl:1: field 'margin' must be a finite number"):
        reward.read_pairs(tmp_path / "types.jsonl", table, "skip")
    write_jsonl(tmp_path / "split.jsonl", [{**pair_rows(1)[0], "split": "test"}])
    with pytest.raises(UserError, match="field 'split' must be 'train' or 'heldout'"):
        reward.read_pairs(tmp_path / "split.jsonl", table, "skip")
    write_jsonl(tmp_path / "bad.jsonl", pair_rows(3) + BAD_ROWS)
    pairs, skips = reward.read_pairs(tmp_path / "bad.jsonl", table, "skip")
    assert len(pairs) == 3 and sum(skips.values()) == 4 and len(skips) == 4
    cfg = reward.RewardConfig(data=str(tmp_path / "bad.jsonl"), strict=True)
    with pytest.raises(UserError, match="4 rows cannot be used"):
        reward.report_skips(cfg, "reward", {"data": skips})
    pairs, skips = reward.read_pairs(tmp_path / "bad.jsonl", table, "equal")  # the tie row is now trained on
    assert len(pairs) == 4 and pairs[-1].tie and sum(skips.values()) == 3


def test_hh_transcripts_split_at_the_shared_prefix(tokenizer, tmp_path):
    c = "\n\nHuman: is the hotel nice?\n\nAssistant: Yes, it is clean."
    r = "\n\nHuman: is the hotel nice?\n\nAssistant: Yes, it broke."
    prompt, chosen, rejected = reward.split_shared_prefix(c, r)
    assert prompt == "\n\nHuman: is the hotel nice?\n\nAssistant:" and chosen == " Yes, it is clean."
    assert prompt + rejected == r
    assert reward.split_shared_prefix("the hotel was clean", "the hotel was cheap") == (
        "the hotel was", " clean", " cheap")
    write_jsonl(tmp_path / "hh.jsonl", [{"chosen": c, "rejected": r}])
    table = reward.SequenceTable(tokenizer, 128)
    [pair], _ = reward.read_pairs(tmp_path / "hh.jsonl", table, "skip")
    assert table.seqs[pair.chosen] == encode_prompt(tokenizer, prompt) + encode_response(tokenizer, chosen)


def test_heldout_split_field_and_bayes_sidecar(base, tmp_path):
    rows = [{**r, "split": "train"} for r in pair_rows(48, seed=3)] + [
        {**r, "split": "heldout"} for r in pair_rows(20, seed=4)]
    write_jsonl(tmp_path / "preferences.jsonl", rows)
    (tmp_path / "preferences.meta.json").write_text(json.dumps({"bayes_accuracy": 0.8}))
    out = reward.run(_cfg(base, tmp_path / "preferences.jsonl", tmp_path / "rm", max_steps=2, eval_every=100))
    s = json.loads((out / "summary.json").read_text())
    assert (s["eval_pairs"], s["train_pairs"], s["eval_source"]) == (20, 48, "rows with split=heldout")
    assert s["eval/rm_bayes_accuracy"] == 0.8
    assert s["eval/rm_accuracy_vs_bayes"] == pytest.approx(s["eval/rm_accuracy"] / 0.8)
    assert {"eval/rm_accuracy_vs_bayes", "eval/rm_bayes_accuracy"} <= set(_metrics(out)[0])
    # the other sidecar convention (<file>.meta.json) and the explicit option (which wins)
    (tmp_path / "preferences.meta.json").unlink()
    (tmp_path / "preferences.jsonl.meta.json").write_text(json.dumps({"bayes_accuracy": 0.85}))
    assert reward._bayes_accuracy(_cfg(base, tmp_path / "preferences.jsonl", "x")) == 0.85
    assert reward._bayes_accuracy(_cfg(base, tmp_path / "preferences.jsonl", "x", bayes_accuracy=0.7)) == 0.7
    with pytest.raises(UserError, match="drop --eval_data"):
        reward.run(_cfg(base, tmp_path / "preferences.jsonl", tmp_path / "rm2", eval_data=str(tmp_path / "x.jsonl")))


def test_eval_fraction_holds_out_whole_rankings(tokenizer):
    table = reward.SequenceTable(tokenizer, 128)
    pairs = [reward.parse_row(r, f"x:{i}", table, "skip") for i, r in enumerate(ranking_rows(20, k=3))]
    cfg = reward.RewardConfig(data="x", eval_fraction=0.25, seed=5)
    train, evals, source, _ = reward.split_heldout(cfg, pairs, table)
    assert len(evals) == 5 * 3 and len(train) == 15 * 3 and "0.25" in source
    assert not {p.group for p in train} & {p.group for p in evals}


# ---------------------------------------------------------------------------------------------------------------
# resume, ensembles, LoRA, loading


def test_resume_gives_identical_weights(base, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "p.jsonl", pair_rows(96, seed=5))
    kw = dict(max_steps=7, save_every=3, eval_every=100, batch_size=8)
    straight = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "a", **kw))

    with crash_after_checkpoints(monkeypatch, 2):  # after the step-6 checkpoint
        reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "b", **kw))
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "b", resume=True, **kw))
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    steps = [r["step"] for r in _metrics(resumed) if "rm/loss" in r]
    assert steps == sorted(steps) and steps[-1] == 7


def test_training_forwards_are_deterministic_with_dropout_in_the_config(tokenizer, tmp_path):
    """OPT copies its dropout rates into plain float attributes at init (`self.dropout = config.dropout`), so only a
    walk over the built model turns them off; the reward stage's model must give equal training-mode forwards."""
    from transformers import OPTConfig, OPTForSequenceClassification

    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128, dropout=0.1,
                       attention_dropout=0.1, activation_dropout=0.1, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    OPTForSequenceClassification(config).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    model, _ = reward.build_model(_cfg(tmp_path / "opt", "unused.jsonl", tmp_path / "rm"), tokenizer, seed=0)
    scorer = LastTokenScorer(model).train()
    ids = torch.tensor([encode_prompt(tokenizer, "the hotel") + encode_response(tokenizer, " was clean.", True)] * 4)
    mask = torch.ones_like(ids)
    first, second = scorer(ids, mask), scorer(ids, mask)
    assert torch.equal(first, second)
    assert torch.equal(first, LastTokenScorer(model).eval()(ids, mask))  # dropout off: train mode = eval mode


# ---------------------------------------------------------------------------------------------------------------
# early stopping on the held-out loss


def _overfitting_rows():
    """32 pairs: 8 clean held-out pairs, 24 training pairs of which a quarter have their labels swapped. With lr 1e-3
    for 60 steps (20 epochs) the held-out loss falls for about 10 steps, then rises far above its minimum."""
    rng = random.Random(1)
    rows = pair_rows(32, seed=3)
    for i, r in enumerate(rows):
        r["split"] = "heldout" if i % 4 == 0 else "train"
        if r["split"] == "train" and rng.random() < 0.25:
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    return rows


def _overfit_cfg(base, data, out, **kw):
    return _cfg(base, data, out, **{"max_steps": 60, "batch_size": 8, "lr": 1e-3, "schedule": "constant", **kw})


@pytest.fixture(scope="module")
def overfit(base, tmp_path_factory):
    """The same overfitting run three ways: early stopping off, on without stopping (patience 0), on with patience 2."""
    d = tmp_path_factory.mktemp("overfit")
    write_jsonl(d / "prefs.jsonl", _overfitting_rows())
    variants = {"off": {}, "kept": dict(early_stopping=True, early_stopping_patience=0),
                "stopped": dict(early_stopping=True, early_stopping_patience=2)}
    return {name: reward.run(_overfit_cfg(base, d / "prefs.jsonl", d / name, **kw)) for name, kw in variants.items()}


def _eval_curve(folder):
    return [(r["step"], r["eval/rm_loss"]) for r in _metrics(folder) if "eval/rm_loss" in r]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_early_stopping_saves_the_best_heldout_weights_and_off_keeps_the_last(overfit):
    from safetensors.torch import load_file

    curve = _eval_curve(overfit["off"])
    best_step, best = min(curve, key=lambda x: x[1])
    assert 0 < best_step < curve[-1][0] and curve[-1][1] > 1.5 * best, curve  # the run overfits
    # off: the last weights are saved, normalised and evaluated (finalize re-scores the saved folder)
    off = _summary(overfit["off"])
    assert "early_stopping" not in off and off["steps"] == 60
    assert off["eval/rm_loss"] == pytest.approx(curve[-1][1], rel=1e-4)
    # on, patience 0: the same training (same curve), but the saved model is the one of the lowest held-out loss
    kept = _summary(overfit["kept"])
    kept_curve = _eval_curve(overfit["kept"])
    assert [x for x, _ in kept_curve] == [x for x, _ in curve]
    assert [y for _, y in kept_curve] == pytest.approx([y for _, y in curve], rel=1e-6)
    assert kept["eval/rm_loss"] == pytest.approx(best, rel=1e-4)
    assert kept["early_stopping"] == {"best_step": best_step, "best_loss": pytest.approx(best), "last_step": 60,
                                      "stopped_early": False, "patience": 0}
    rows = [r for r in _metrics(overfit["kept"]) if "eval/rm_loss" in r]
    assert (rows[-1]["eval/rm_best_step"], rows[-1]["eval/rm_best_loss"]) == (best_step, pytest.approx(best))
    assert json.loads((overfit["kept"] / "member.json").read_text())["early_stopping"]["best_step"] == best_step
    # on, patience 2: training stops at the second evaluation in a row without a new minimum
    low, since, stop = math.inf, 0, None
    for step, loss in curve:
        low, since = (loss, 0) if loss < low else (low, since + 1)
        if since == 2:
            stop = step
            break
    stopped = _summary(overfit["stopped"])
    assert stop is not None and stopped["steps"] == stop < 60
    assert stopped["early_stopping"]["stopped_early"] and stopped["early_stopping"]["best_step"] == best_step
    assert stopped["eval/rm_loss"] == pytest.approx(best, rel=1e-4)
    assert _eval_curve(overfit["stopped"])[-1][0] == stop
    w_kept, w_stopped = load_file(overfit["kept"] / "model.safetensors"), load_file(overfit["stopped"] / "model.safetensors")
    assert all(torch.equal(w_kept[k], w_stopped[k]) for k in w_kept)  # both saved the weights of step best_step


def test_doctor_judges_the_kept_checkpoint_of_an_early_stopped_run(overfit):
    from rlhf.diagnose.doctor import diagnose

    assert "eval-loss-rising" in diagnose(overfit["off"]).rules_hit()  # the last weights are the overfit ones
    assert "eval-loss-rising" not in diagnose(overfit["kept"]).rules_hit()  # the same curve, but the best was kept
    assert "eval-loss-rising" not in diagnose(overfit["stopped"]).rules_hit()


def test_resume_keeps_the_best_heldout_weights_of_before_the_crash(base, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "p.jsonl", _overfitting_rows())
    kw = dict(max_steps=20, save_every=12, early_stopping=True, early_stopping_patience=0)
    straight = reward.run(_overfit_cfg(base, tmp_path / "p.jsonl", tmp_path / "a", **kw))
    best_step = _summary(straight)["early_stopping"]["best_step"]
    assert best_step < 12  # the best weights are only in the checkpoint when the run resumes

    with crash_after_checkpoints(monkeypatch, 1):
        reward.run(_overfit_cfg(base, tmp_path / "p.jsonl", tmp_path / "b", **kw))
    resumed = reward.run(_overfit_cfg(base, tmp_path / "p.jsonl", tmp_path / "b", resume=True, **kw))
    assert _summary(resumed)["early_stopping"] == _summary(straight)["early_stopping"]
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_needs_heldout_pairs(base, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", pair_rows(16, seed=2))
    with pytest.raises(UserError, match="early_stopping needs held-out pairs"):
        reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "rm", eval_fraction=0, early_stopping=True))


def test_ensemble_saves_members_and_loads_member_scores(base, tmp_path, tokenizer):
    write_jsonl(tmp_path / "p.jsonl", pair_rows(64, seed=6))
    out = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "rm", ensemble=2, max_steps=3, eval_every=100,
                          early_stopping=True))
    assert (out / "members" / "1" / "model.safetensors").exists() and (out / "members/1/reward_config.json").exists()
    kept = json.loads((out / "summary.json").read_text())["early_stopping"]["members"]  # each member its own best
    assert kept == [json.loads((d / "member.json").read_text())["early_stopping"] for d in (out, out / "members/1")]
    assert len(_metrics(out / "members" / "1")) > 0
    rc = json.loads((out / "reward_config.json").read_text())
    assert [m["path"] for m in rc["members"]] == [".", "members/1"]
    ev = json.loads((out / "eval.json").read_text())
    assert len(ev["members"]) == 2
    rm = load_reward_model(out)
    score, members = _score_texts(rm, tokenizer, ["the hotel"] * 3, [" was great.", " was slow.", " broke."])
    assert members.shape == (2, 3)
    assert not torch.allclose(members[0], members[1])  # different seeds: different models
    assert torch.allclose(score, members.mean(0))
    # member 1 alone = its own folder's normalised score
    solo = load_reward_model(out / "members" / "1")
    assert torch.allclose(_score_texts(solo, tokenizer, ["the hotel"] * 3, [" was great.", " was slow.", " broke."])[0],
                          members[1], atol=1e-5)


def test_lora_merges_adapters_into_a_plain_model(base, tmp_path):
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "p.jsonl", pair_rows(48, seed=7))
    out = reward.run(_cfg(base, tmp_path / "p.jsonl", tmp_path / "rm", lora_r=4, max_steps=3, eval_every=100,
                          lr=1e-2))
    w, w0 = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert not any("lora" in k for k in w)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert w[q].shape == w0[q].shape and not torch.equal(w[q], w0[q])  # merged adapters changed the weight
    e = "model.embed_tokens.weight"
    assert torch.equal(w[e], w0[e])  # not a LoRA target: frozen


def test_load_reward_model_without_reward_config_warns(base, tmp_path, caplog):
    model = load_scalar_model(base, init_head_std=0.1)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        rm = load_reward_model(tmp_path)
    assert rm.gain == 1.0 and rm.bias == 0.0 and len(rm.members) == 1 and rm.tokenizer_path == str(tmp_path)
    assert "reward_config.json" in caplog.text
    assert not any(p.requires_grad for p in rm.parameters())
