import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.cli import main
from rlhf.io import write_jsonl
from rlhf.stages import sample, sft
from tests.conftest import SENTENCES
from tests.support.runs import crash_after_checkpoints


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "train.jsonl", [{"text": s} for s in SENTENCES * 30])
    write_jsonl(d / "val.jsonl", [{"text": s} for s in SENTENCES])
    write_jsonl(d / "pairs.jsonl", [{"prompt": s.split(" and ")[0], "response": " and " + s.split(" and ")[1]}
                                    for s in SENTENCES if " and " in s] * 10)
    write_jsonl(d / "prompts.jsonl", [{"prompt_id": f"p{i}", "prompt": s.split()[0] + " " + s.split()[1]}
                                      for i, s in enumerate(SENTENCES)])
    return d


def _cfg(data_dir, out, **kw):
    base = dict(model="tiny:tiny", tokenizer_vocab_size=300, data=str(data_dir / "train.jsonl"),
                eval_data=str(data_dir / "val.jsonl"), out=str(out), max_steps=40, batch_size=8, lr=1e-2,
                warmup_steps=4, eval_every=20, save_every=0, log_every=5, seed=0, device="cpu")
    base.update(kw)
    return sft.SFTConfig(**base)


@pytest.fixture(scope="module")
def base_model(text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    sft.run(_cfg(text_data, out))
    return out


def test_pretraining_lowers_perplexity_and_logs(base_model):
    rows = [json.loads(x) for x in (base_model / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/perplexity"] for r in rows if "eval/perplexity" in r]
    assert evals[0] > 100  # untrained: near the vocabulary size
    assert evals[-1] < evals[0] / 5
    losses = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert losses[-1] < losses[0]
    assert (base_model / "config.yaml").exists() and (base_model / "summary.json").exists()


def test_sft_output_loads_with_plain_transformers(base_model):
    path = str(base_model)
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({path!r}); t = AutoTokenizer.from_pretrained({path!r})\n"
            "assert 'rlhf' not in sys.modules; print(type(m).__name__, t.eos_token)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["LlamaForCausalLM", "<eos>"]


def test_prompt_response_sft_masks_prompt_and_learns(base_model, text_data, tmp_path):
    from rlhf.models.loading import load_tokenizer

    tok = load_tokenizer(base_model)
    rows = [{"prompt": "the hotel", "response": " was clean"}]
    [(ids, labels)] = sft.tokenize_examples(rows, tok, 64, "x.jsonl")
    n_prompt = len(tok("the hotel")["input_ids"])
    assert labels[:n_prompt] == [sft.IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    out = sft.run(_cfg(text_data, tmp_path / "sft", model=str(base_model), data=str(text_data / "pairs.jsonl"),
                       eval_data=str(text_data / "pairs.jsonl"), max_steps=15, lr=3e-3))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert evals[-1] < evals[0]


def test_resume_is_bit_identical(text_data, tmp_path, monkeypatch):
    straight = sft.run(_cfg(text_data, tmp_path / "a", max_steps=12, save_every=5, eval_every=100))

    with crash_after_checkpoints(monkeypatch, 2):  # after the step-10 checkpoint
        sft.run(_cfg(text_data, tmp_path / "b", max_steps=12, save_every=5, eval_every=100))
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = sft.run(_cfg(text_data, tmp_path / "b", max_steps=12, save_every=5, eval_every=100, resume=True))
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 12


@pytest.mark.slow
def test_two_processes_log_whole_epochs_and_the_loss_of_every_rank(base_model, tmp_path):
    """One epoch on 2 CPU processes (gloo) logs epoch 1.0 at its end, and each logged `sft/loss` is the mean over
    both ranks' micro-batches since the last row (each rank records the loss of every training forward it ran)."""
    write_jsonl(tmp_path / "train.jsonl", [{"text": SENTENCES[i % len(SENTENCES)]} for i in range(64)])
    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, sys\n"
        "from rlhf.stages import sft\n"
        "seen, build = [], sft._model\n"
        "def _model(*a, **kw):\n"
        "    model, peft = build(*a, **kw)\n"
        "    model.register_forward_hook(lambda m, args, out: seen.append(float(out.loss)) if m.training else None)\n"
        "    return model, peft\n"
        "sft._model = _model\n"
        "sft.run(sft.SFTConfig(model=sys.argv[1], data=sys.argv[2], out=sys.argv[3], epochs=1.0, batch_size=8, lr=1e-3,"
        " warmup_steps=1, log_every=2, save_every=0, device='cpu'))\n"
        "open(os.path.join(sys.argv[3], f\"seen_{os.environ['RANK']}.json\"), 'w').write(json.dumps(seen))\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "two"
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(base_model),
                        str(tmp_path / "train.jsonl"), str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    seen = [json.loads((out / f"seen_{rank}.json").read_text()) for rank in (0, 1)]
    # 64 rows / batch 8 = 8 micro-batches an epoch, 4 per rank: 4 optimiser steps, logged at steps 2 and 4
    assert [r["step"] for r in rows] == [2, 4] and len(seen[0]) == len(seen[1]) == 4
    assert [r["epoch"] for r in rows] == [0.5, 1.0]
    for row, lo in zip(rows, (0, 2)):
        ranks = [sum(s[lo: lo + 2]) / 2 for s in seen]
        assert ranks[0] != pytest.approx(ranks[1], rel=1e-3)  # the ranks saw different data
        assert row["sft/loss"] == pytest.approx(sum(ranks) / 2, rel=1e-5), (row, ranks)


def test_sample_writes_k_responses(base_model, text_data, tmp_path):
    out = sample.run(sample.SampleConfig(model=str(base_model), prompts=str(text_data / "prompts.jsonl"),
                                         out=str(tmp_path / "s.jsonl"), k=3, max_new_tokens=40, batch_size=5,
                                         temperature=0.8, device="cpu"))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(SENTENCES)
    assert [r["prompt_id"] for r in rows] == [f"p{i}" for i in range(len(SENTENCES))]
    for r in rows:
        assert len(r["responses"]) == 3 and len(r["ended"]) == 3
        assert set(r) >= {"prompt_id", "prompt", "responses", "model", "sampling"}
        assert r["sampling"]["temperature"] == 0.8
    # a model trained on short sentences ending in EOS stops on its own most of the time
    ended = [e for r in rows for e in r["ended"]]
    assert sum(ended) / len(ended) > 0.5
    # responses are new text, not the prompt again
    assert any(len(resp.strip()) > 0 for r in rows for resp in r["responses"])


def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_errors_are_one_line(text_data, tmp_path, capsys):
    code, err = _cli(capsys, "sft", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and "nope.jsonl: file not found" in err[0]

    (tmp_path / "empty.jsonl").write_text("")
    code, err = _cli(capsys, "sft", "--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no rows" in err[0]

    (tmp_path / "c.yaml").write_text("lr: 0.1\nbatch_sise: 4\n")
    code, err = _cli(capsys, "sft", "--config", str(tmp_path / "c.yaml"), "--data", "x")
    assert code == 2 and "unknown key 'batch_sise'" in err[0] and "batch_size" in err[0]

    code, err = _cli(capsys, "sft", "--data", str(text_data / "train.jsonl"), "--lr", "abc")
    assert code == 2 and "field 'lr'" in err[0]

    write_jsonl(tmp_path / "long.jsonl", [{"prompt": "a", "response": " word" * 500}])
    code, err = _cli(capsys, "sft", "--model", "tiny:tiny", "--data", str(tmp_path / "long.jsonl"),
                     "--out", str(tmp_path / "o"), "--tokenizer_vocab_size", "300", "--device", "cpu")
    assert code == 2 and "row 1" in err[0] and "longer than max_length" in err[0]

    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}])
    code, err = _cli(capsys, "sft", "--model", "tiny:tiny", "--data", str(tmp_path / "bad.jsonl"),
                     "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and "field 'response'" in err[0]


def test_sample_rejects_prompt_longer_than_context(base_model, tmp_path, capsys):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the food " * 100}])
    code, err = _cli(capsys, "sample", "--model", str(base_model), "--prompts", str(tmp_path / "p.jsonl"),
                     "--out", str(tmp_path / "s.jsonl"), "--device", "cpu")
    assert code == 2 and len(err) == 1 and "exceeds the model's context" in err[0]


def test_cli_help_lists_every_subcommand():
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in ("sft", "sample", "label", "demo"):
        assert name in r.stdout
