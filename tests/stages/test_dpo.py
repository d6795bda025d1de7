"""DPO on the tiny models the reward tests build: it learns the preference (loss falls, held-out DPO accuracy above
chance), its first step is at policy == reference (log-ratios exactly 0), the precomputed and the online reference
agree, resume is bit-identical, and bad input is a one-line error."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhf.cli import main
from rlhf.io import write_jsonl
from rlhf.stages import dpo
from tests.stages.reward_data import pair_rows, ranking_rows, save_base_model
from tests.support.runs import crash_after_checkpoints


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    return save_base_model(tokenizer, tmp_path_factory.mktemp("sft"))


@pytest.fixture(scope="module")
def dropout_base(base, tmp_path_factory):
    """The same model with attention dropout 0.3 in its config: DPO must switch it off, or the policy's training
    forward differs from the reference's at step 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("dropout")
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.attention_dropout = 0.3
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """Chosen responses hold a positive word, rejected ones a negative word (chance is 0.5)."""
    d = tmp_path_factory.mktemp("prefs")
    write_jsonl(d / "prefs.jsonl", pair_rows(240, seed=0))
    return d / "prefs.jsonl"


def _cfg(base, data, out, **kw):
    values = dict(model=str(base), data=str(data), out=str(out), batch_size=16, lr=1e-3, warmup_steps=2, beta=0.1,
                  eval_every=5, log_every=1, save_every=0, max_length=96, device="cpu", seed=0)
    values.update(kw)
    return dpo.DPOConfig(**values)


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(base, prefs, tmp_path_factory):
    return dpo.run(_cfg(base, prefs, tmp_path_factory.mktemp("dpo") / "out"))


def test_dpo_learns_the_preference(trained):
    rows = _metrics(trained)
    losses = [r["dpo/loss"] for r in rows if "dpo/loss" in r]
    evals = [r for r in rows if "eval/dpo_accuracy" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: sigmoid(0)
    assert losses[-1] < losses[0] - 0.2
    assert evals[0]["eval/dpo_accuracy"] == 0.0  # every held-out pair a tie at the start
    assert evals[-1]["eval/dpo_accuracy"] > 0.8 and evals[-1]["eval/dpo_loss"] < evals[0]["eval/dpo_loss"]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["kind"] == "dpo" and summary["eval/dpo_accuracy"] == evals[-1]["eval/dpo_accuracy"]
    assert {"dpo/margin", "dpo/chosen_logratio", "dpo/rejected_logratio", "dpo/lr", "dpo/grad_norm"} <= set(rows[1])


@pytest.mark.parametrize("kw", [dict(reference="precompute", grad_accum=2), dict(reference="online"),
                                dict(reference="online", lora_r=4, lr=1e-2)], ids=["precompute", "online", "lora"])
def test_first_step_is_at_policy_equal_to_reference(dropout_base, prefs, tmp_path, kw):
    out = dpo.run(_cfg(dropout_base, prefs, tmp_path / "o", max_steps=2, eval_every=100, **kw))
    rows = _metrics(out)
    first = next(r for r in rows if "dpo/loss" in r)
    assert first["step"] == 1
    assert first["dpo/chosen_logratio"] == 0.0 and first["dpo/rejected_logratio"] == 0.0  # exactly, not ~1e-7
    assert first["dpo/margin"] == 0.0 and rows[0]["eval/dpo_chosen_logratio"] == 0.0
    second = next(r for r in rows if r.get("step") == 2 and "dpo/loss" in r)
    assert second["dpo/margin"] != 0.0  # the policy moved away from the reference


def test_precomputed_and_online_reference_train_the_same(base, prefs, tmp_path, trained):
    online = dpo.run(_cfg(base, prefs, tmp_path / "online", reference="online"))
    a, b = _metrics(trained), _metrics(online)
    for ra, rb in zip(a, b):
        for key in ("dpo/loss", "eval/dpo_loss"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-5), (ra["step"], key)


def test_resume_is_bit_identical(base, tmp_path, monkeypatch):
    data = tmp_path / "rank.jsonl"
    write_jsonl(data, ranking_rows(30, 3, seed=1))  # k-wise rankings: groups packed together, a ranking per group
    straight = dpo.run(_cfg(base, data, tmp_path / "a", max_steps=8, save_every=3, eval_every=4, early_stopping=True))

    with crash_after_checkpoints(monkeypatch, 2):  # after the step-6 checkpoint
        dpo.run(_cfg(base, data, tmp_path / "b", max_steps=8, save_every=3, eval_every=4, early_stopping=True))
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = dpo.run(_cfg(base, data, tmp_path / "b", max_steps=8, save_every=3, eval_every=4, early_stopping=True,
                           resume=True))
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [{k: v for k, v in r.items() if k != "throughput/tokens_per_s"} for r in _metrics(straight)]
    assert strip == [{k: v for k, v in r.items() if k != "throughput/tokens_per_s"} for r in _metrics(resumed)]


def test_the_output_is_a_plain_hf_policy_that_eval_compares_with_the_sft_model(trained, base):
    from transformers import AutoModelForCausalLM

    from rlhf.stages import evaluate

    assert AutoModelForCausalLM.from_pretrained(trained) is not None
    cfg = evaluate.resolve(evaluate.EvalConfig(policy=str(trained), reward="r", prompts="p.jsonl"))
    assert cfg.baseline == str(base) and cfg.ref == str(base) and cfg.out == str(trained.parent / "eval")


def test_bad_input_is_one_line(base, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [{"prompt": "p", "chosen": " same", "rejected": " same"}] * 5)  # nothing to learn from
    for argv, message in [
        (["--data", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["--data", str(empty), "--eval_fraction", "0"], "no training pairs left"),
        (["--data", str(empty), "--beta", "0"], "config field 'beta'"),
        (["--data", str(empty), "--reference", "frozen"], "field 'reference'"),
    ]:
        assert main(["dpo", "--model", str(base), "--out", str(tmp_path / "o"), "--device", "cpu", *argv]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhf: error")]
        assert len(errors) == 1 and message in errors[0], errors  # progress lines (the skip count) may come before
    assert not (tmp_path / "o").exists()  # a failed run leaves no folder holding only config.yaml


def test_logged_names_are_defined_in_docs_metrics(base, prefs, tmp_path):
    from pathlib import Path

    out = dpo.run(_cfg(base, prefs, tmp_path / "es", max_steps=6, eval_every=2, early_stopping=True))
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    section = doc.split("## DPO")[1].split("\n## ")[0] + doc.split("## Common")[1].split("\n## ")[0]
    names = {n for line in section.splitlines() if line.startswith("| `") for n in line.split("|")[1].split("`")[1::2]}
    logged = {k for r in _metrics(out) for k in r}
    assert logged <= names, logged - names
    assert {"dpo/loss", "dpo/accuracy", "dpo/margin", "dpo/chosen_logratio", "dpo/rejected_logratio",
            "eval/dpo_loss", "eval/dpo_accuracy", "eval/dpo_best_loss", "eval/dpo_best_step"} <= logged


def test_rpo_adds_the_chosen_nll_gradient_and_keeps_the_chosen_responses_likelier(base, prefs, tmp_path, trained):
    rpo = dpo.run(_cfg(base, prefs, tmp_path / "rpo", rpo_alpha=1.0))
    rows, plain = [r for r in _metrics(rpo) if "dpo/loss" in r], [r for r in _metrics(trained) if "dpo/loss" in r]
    first = rows[0]
    assert first["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)  # the DPO term alone, comparable across rpo_alpha
    assert first["dpo/grad_norm"] > plain[0]["dpo/grad_norm"] * 1.5  # the NLL term adds its gradient
    assert first["dpo/chosen_nll"] == pytest.approx(plain[0]["dpo/chosen_nll"], rel=1e-6)  # same policy at step 1
    assert rows[-1]["dpo/chosen_nll"] < plain[-1]["dpo/chosen_nll"] - 0.1
    assert rows[-1]["dpo/chosen_logratio"] > plain[-1]["dpo/chosen_logratio"]


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(base, prefs, tmp_path):
    """2 CPU processes (gloo, each every other batch) train as 1 process accumulating 2 micro-batches: same log rows,
    same held-out numbers (the sharded reference precompute and evaluation gathered), same weights to rounding."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom rlhf.stages import dpo\n"
        "dpo.run(dpo.DPOConfig(model=sys.argv[1], data=sys.argv[2], out=sys.argv[3], batch_size=16, lr=1e-3, "
        "warmup_steps=2, eval_every=3, log_every=1, save_every=0, max_length=96, device='cpu', max_steps=6, "
        "grad_accum=int(sys.argv[4])))\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(base), str(prefs), str(tmp_path / "two"),
                        "1"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one = dpo.run(_cfg(base, prefs, tmp_path / "one", max_steps=6, eval_every=3, grad_accum=2))
    a, b = _metrics(tmp_path / "two"), _metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("epoch", "dpo/loss", "dpo/grad_norm", "eval/dpo_loss", "eval/dpo_accuracy"):
            if k in rb:
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (rb["step"], k)
    wa, wb = load_file(tmp_path / "two" / "model.safetensors"), load_file(one / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wb)
