"""PPO on tiny real models: learning happens, and every implementation detail users trip over is checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.errors import UserError
from rlhf.io import write_jsonl
from rlhf.stages import ppo, sft
from tests.conftest import SENTENCES
from tests.support.runs import run_one_and_two_processes

PROMPTS = ["the hotel", "this film", "the staff", "i bought", "the food", "a boring", "the blender", "the lamp"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_ppo_setup(tmp_path_factory.mktemp("ppo"))


def tiny_ppo_setup(d):
    """A tiny base LM trained on short sentences, a scalar-head model from it (any reward model will do for the
    mechanics tests), and a prompt file, under `d`."""
    from rlhf.models.loading import default_head_std, load_scalar_model, load_tokenizer

    write_jsonl(d / "train.jsonl", [{"text": s} for s in SENTENCES * 30])
    write_jsonl(d / "prompts.jsonl", [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    base = sft.run(sft.SFTConfig(model="tiny:tiny", tokenizer_vocab_size=300, data=str(d / "train.jsonl"),
                                 out=str(d / "base"), max_steps=40, batch_size=8, lr=1e-2, warmup_steps=4,
                                 save_every=0, log_every=10, device="cpu"))
    torch.manual_seed(0)
    rm = load_scalar_model(base, init_head_std=default_head_std(load_scalar_model(base)))
    rm.save_pretrained(d / "rm")
    load_tokenizer(base).save_pretrained(d / "rm")
    return {"dir": d, "base": base, "rm": d / "rm", "prompts": d / "prompts.jsonl"}


def _cfg(setup, out, **kw):
    base = dict(policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]), out=str(out),
                updates=2, rollout_batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=12, lr=1e-4,
                save_every=0, log_samples_every=0, tensorboard=False, device="cpu", seed=0)
    base.update(kw)
    return ppo.PPOConfig(**base)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors")


@pytest.mark.parametrize("source", ["auto", "recompute"])
def test_ratio_is_one_on_first_minibatch(setup, tmp_path, monkeypatch, source):
    """Sampling and training log-probs agree (same temperature, dropout off): the first ratio is 1, whether the
    rollout's log-probs come from the sampling steps (auto in fp32) or from a second forward (recompute)."""
    seen = []
    real = ppo.ppo_policy_loss

    def spy(logp, old_logp, advantages, mask, clip_range):
        seen.append((logp.detach().clone(), old_logp.clone(), mask.clone()))
        return real(logp, old_logp, advantages, mask, clip_range)

    monkeypatch.setattr(ppo, "ppo_policy_loss", spy)
    ppo.run(_cfg(setup, tmp_path / "r", updates=1, temperature=0.6, rollout_logprobs=source))
    logp, old_logp, mask = seen[0]
    diff = (logp - old_logp)[mask].abs().max().item()
    assert diff < 1e-5, diff
    # and the later minibatches have moved (the policy was updated in between)
    later = max((a - b)[m].abs().max().item() for a, b, m in seen[1:])
    assert later > diff


def test_sampler_and_recomputed_rollout_logprobs_give_the_same_update(setup, tmp_path):
    """rollout_logprobs=sampler skips the second policy forward; the samples, metrics and trained weights are those
    of recompute up to float32 rounding. sampler cannot serve a shared value head (it needs that forward)."""
    a = ppo.run(_cfg(setup, tmp_path / "a", updates=2, rollout_logprobs="sampler"))
    b = ppo.run(_cfg(setup, tmp_path / "b", updates=2, rollout_logprobs="recompute"))
    for ma, mb in zip(_metrics(a), _metrics(b)):
        for k in ("objective/scores", "objective/kl", "objective/entropy", "response/length_mean", "loss/policy"):
            assert ma[k] == pytest.approx(mb[k], rel=1e-3, abs=1e-4), k
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3)
    with pytest.raises(UserError, match="rollout_logprobs.*shared_value_head"):
        ppo.run(_cfg(setup, tmp_path / "c", rollout_logprobs="sampler", shared_value_head=True))


def test_split_into_accumulation_steps_does_not_change_the_update(setup, tmp_path):
    a = ppo.run(_cfg(setup, tmp_path / "a", updates=1, num_minibatches=1, grad_accum=1, ppo_epochs=1))
    b = ppo.run(_cfg(setup, tmp_path / "b", updates=1, num_minibatches=1, grad_accum=4, ppo_epochs=1))
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    ma, mb = _metrics(a)[0], _metrics(b)[0]
    for k in ("loss/policy", "loss/value", "policy/clipfrac", "objective/kl", "objective/scores"):
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k


def test_logs_every_named_metric(setup, tmp_path):
    out = ppo.run(_cfg(setup, tmp_path / "m", updates=1, log_samples_every=1, tensorboard=True))
    row = _metrics(out)[0]
    names = ["objective/scores", "objective/kl", "objective/kl_coef", "objective/entropy", "objective/non_score_reward",
             "objective/rlhf_reward", "policy/clipfrac", "policy/approxkl", "policy/ratio_mean", "loss/policy",
             "loss/value", "value/explained_variance", "value/clipfrac", "response/length_mean",
             "response/eos_fraction", "time/generate_s", "time/score_s", "time/train_s", "time/update_s",
             "throughput/tokens_per_s"]
    for n in names:
        assert n in row, n
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for n in row:
        assert f"`{n}`" in documented or n in ("lr/policy", "lr/value"), f"{n} is not defined in docs/metrics.md"
    assert row["objective/rlhf_reward"] == pytest.approx(row["objective/scores"] + row["objective/non_score_reward"])
    assert (out / "samples.jsonl").exists() and any((out / "tb").iterdir())


def test_truncation_after_eos_and_missing_eos_penalty(setup, tmp_path):
    """With max_new_tokens=2 most responses cannot finish: the penalty lowers exactly those scores."""
    a = _metrics(ppo.run(_cfg(setup, tmp_path / "a", updates=1, max_new_tokens=2)))[0]
    b = _metrics(ppo.run(_cfg(setup, tmp_path / "b", updates=1, max_new_tokens=2, missing_eos_penalty=-3.0)))[0]
    missing = 1.0 - a["response/eos_fraction"]
    assert missing > 0
    assert b["objective/scores"] == pytest.approx(a["objective/scores"] - 3.0 * missing, abs=1e-4)
    assert a["response/length_mean"] <= 2


def test_adaptive_kl_moves_coefficient_toward_target(setup, tmp_path):
    """Target far above the observed KL -> the coefficient falls; far below -> it rises."""
    for target in (100.0, 1e-3):
        rows = _metrics(ppo.run(_cfg(setup, tmp_path / str(target), updates=4, adaptive_kl=True, kl_target=target,
                                     kl_horizon=40, lr=1e-3)))
        assert rows[0]["objective/kl_coef"] == pytest.approx(0.05)
        for before, after in zip(rows, rows[1:]):
            # e = clip(kl/target - 1, -0.2, 0.2); coef *= 1 + e * 8 / 40 (8 rollouts per update)
            e = min(max(before["objective/kl"] / target - 1, -0.2), 0.2)
            assert after["objective/kl_coef"] == pytest.approx(before["objective/kl_coef"] * (1 + e * 8 / 40))
        moves = [b["objective/kl_coef"] - a["objective/kl_coef"] for a, b in zip(rows, rows[1:])]
        if target == 100.0:
            assert all(m < 0 for m in moves)  # KL far below target: the penalty relaxes
        else:
            assert moves[-1] > 0  # once the policy has moved, KL exceeds the tiny target: the penalty grows


def test_resume_is_bit_identical(setup, tmp_path, monkeypatch):
    straight = ppo.run(_cfg(setup, tmp_path / "a", updates=4, save_every=2))

    calls = {"n": 0}
    real = ppo.ppo_update

    def crash_after_three(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(ppo, "ppo_update", crash_after_three)
    with pytest.raises(RuntimeError):
        ppo.run(_cfg(setup, tmp_path / "b", updates=4, save_every=2))
    monkeypatch.setattr(ppo, "ppo_update", real)
    resumed = ppo.run(_cfg(setup, tmp_path / "b", updates=4, save_every=2, resume=True))
    wa, wb = _weights(straight), _weights(resumed)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    va, vb = _weights(straight / "value"), _weights(resumed / "value")
    for k in va:
        assert torch.equal(va[k], vb[k]), k
    # update 3 was logged before the crash, after the update-2 checkpoint: resume drops it and logs it again once
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4]


def test_lora_reference_equals_base_model(setup, tmp_path):
    """With LoRA the reference is the policy with adapters disabled: its log-probs equal the base model's."""
    from peft import LoraConfig, get_peft_model

    from rlhf.models.generation import generate, left_pad, response_logprobs
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(setup["base"])
    base = load_causal_lm(setup["base"]).eval()
    peft_model = get_peft_model(load_causal_lm(setup["base"]), LoraConfig(r=4, target_modules="all-linear",
                                                                            lora_dropout=0.0, init_lora_weights=False))
    peft_model.eval()
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id)
    torch.manual_seed(0)
    batch = generate(base, ids, mask, max_new_tokens=8, temperature=0.7, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        want, _ = response_logprobs(base, batch, 0.7)
        with_adapters, _ = response_logprobs(peft_model, batch, 0.7)
        with ppo._reference(None, peft_model):
            got, _ = response_logprobs(peft_model, batch, 0.7)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (with_adapters - want).abs().max() > 1e-3  # the adapters do change the policy
    out = ppo.run(_cfg(setup, tmp_path / "lora", updates=1, lora_r=4))
    assert not any("lora" in k for k in _weights(out))  # merged: plain transformers loads it


def test_run_folder_loads_and_samples(setup, tmp_path):
    out = ppo.run(_cfg(setup, tmp_path / "p", updates=1))
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer, "
            "AutoModelForSequenceClassification as S\n"
            f"AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained({str(out)!r}); "
            f"S.from_pretrained({str(out / 'value')!r}); assert 'rlhf' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    from rlhf.stages import sample

    s = sample.run(sample.SampleConfig(model=str(out), prompts=str(setup["prompts"]), out=str(tmp_path / "s.jsonl"),
                                       k=2, max_new_tokens=8, device="cpu"))
    assert len(s.read_text().splitlines()) == len(PROMPTS)


def test_config_errors(setup, tmp_path):
    from rlhf.errors import ConfigError, UserError

    with pytest.raises(ConfigError, match="num_minibatches"):
        _cfg(setup, tmp_path, rollout_batch_size=6, num_minibatches=4).validate()
    with pytest.raises(ConfigError, match="temperature"):
        _cfg(setup, tmp_path, temperature=0.0).validate()
    with pytest.raises(UserError, match="exceeds the model's context"):
        ppo.run(_cfg(setup, tmp_path / "x", max_new_tokens=10_000))


@pytest.mark.slow
def test_two_processes_match_one(setup, tmp_path):
    """2 CPU processes (gloo) on the same global batch give the same losses and weights as 1 process."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys; from rlhf.stages import ppo\n"
        "cfg = ppo.PPOConfig(policy=sys.argv[1], reward=sys.argv[2], prompts=sys.argv[3], out=sys.argv[4], updates=2,"
        " rollout_batch_size=8, generation_batch_size=4, num_minibatches=1, ppo_epochs=2, max_new_tokens=10, lr=1e-4,"
        " save_every=0, log_samples_every=0, tensorboard=False, device='cpu')\n"
        "ppo.run(cfg)\n")
    one, two = run_one_and_two_processes(
        script, [str(setup["base"]), str(setup["rm"]), str(setup["prompts"])], tmp_path)
    m1, m2 = _metrics(one), _metrics(two)
    for r1, r2 in zip(m1, m2):
        for k in ("objective/scores", "objective/kl", "loss/policy", "loss/value", "policy/clipfrac"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-5), (k, r1[k], r2[k])
    w1, w2 = _weights(one), _weights(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_ppo_raises_score_of_a_reward_model_with_a_known_preference(setup, tmp_path):
    """A reward model trained to prefer positive words; PPO must raise its mean score clearly within a few dozen
    updates while the KL to the reference stays bounded, and the gold-free property itself must move."""
    from rlhf.stages import reward
    from tests.stages.reward_data import NEGATIVE, POSITIVE, pair_rows

    write_jsonl(tmp_path / "prefs.jsonl", pair_rows(400, seed=1))
    rm = reward.run(reward.RewardConfig(model=str(setup["base"]), data=str(tmp_path / "prefs.jsonl"),
                                        out=str(tmp_path / "rm"), max_steps=60, batch_size=16, lr=3e-3,
                                        eval_every=1000, save_every=0, device="cpu"))
    out = ppo.run(_cfg(setup, tmp_path / "ppo", reward=str(rm), updates=30, rollout_batch_size=16, num_minibatches=2,
                       ppo_epochs=2, max_new_tokens=16, lr=3e-4, kl_coef=0.05, log_samples_every=0))
    rows = _metrics(out)
    first = sum(r["objective/scores"] for r in rows[:5]) / 5
    last = sum(r["objective/scores"] for r in rows[-5:]) / 5
    assert last > first + 0.4, (first, last)  # scores are normalised: std 1 on SFT samples
    assert all(r["objective/kl"] < 15 for r in rows), [round(r["objective/kl"], 2) for r in rows]
    assert rows[-1]["value/explained_variance"] > 0

    def positive_share(folder):
        from rlhf.stages import sample

        s = sample.run(sample.SampleConfig(model=str(folder), prompts=str(setup["prompts"]), k=8, max_new_tokens=16,
                                           temperature=0.7, out=str(tmp_path / f"{folder.name}.jsonl"), device="cpu"))
        texts = [t for r in map(json.loads, s.read_text().splitlines()) for t in r["responses"]]
        pos = sum(any(w in t for w in POSITIVE) for t in texts)
        neg = sum(any(w in t for w in NEGATIVE) for t in texts)
        return pos / max(1, pos + neg)

    assert positive_share(out) > positive_share(setup["base"])


def test_shared_value_head_runs_and_learns_values(setup, tmp_path):
    out = ppo.run(_cfg(setup, tmp_path / "shared", updates=6, shared_value_head=True, value_lr=1e-2, lr=1e-4))
    rows = _metrics(out)
    assert (out / "value_head.safetensors").exists() and not (out / "value").exists()
    assert rows[0]["value/mean"] == 0.0  # a fresh head starts at zero
    assert rows[-1]["value/explained_variance"] > rows[0]["value/explained_variance"]
    assert not any("v_head" in k for k in _weights(out))  # the policy folder is a plain causal LM


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_resume_finishes(setup, tmp_path):
    """SIGTERM mid-run: the current update finishes, a checkpoint is written, the exit is 130; --resume completes."""
    import signal
    import time

    out = tmp_path / "term"
    args = [sys.executable, "-m", "rlhf.cli", "ppo", "--policy", str(setup["base"]), "--reward", str(setup["rm"]),
            "--prompts", str(setup["prompts"]), "--out", str(out), "--updates", "400", "--rollout_batch_size", "8",
            "--num_minibatches", "2", "--ppo_epochs", "1", "--max_new_tokens", "8", "--save_every", "0",
            "--log_samples_every", "0", "--tensorboard", "false", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err
    import torch as _torch

    saved = _torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)["update"]
    assert saved == len(_metrics(out)) and saved < 400
    resumed = subprocess.run([*args[:args.index("--updates") + 1], str(saved + 2), *args[args.index("--updates") + 2:],
                              "--resume", "true"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in _metrics(out)] == list(range(1, saved + 3))


def _vllm_unavailable():
    from rlhf.models.precision import vllm_unavailable

    return vllm_unavailable()


@pytest.mark.skipif(_vllm_unavailable() is not None, reason=f"vLLM backend cannot run here: {_vllm_unavailable()}")
def test_vllm_rollouts_on_a_gpu(setup, tmp_path):
    """Two updates with rollouts from the colocated vLLM engine: the log-probs are recomputed by the policy (first
    ratio 1), and the engine samples from the updated weights (the second update's samples follow the policy)."""
    out = ppo.run(_cfg(setup, tmp_path / "v", updates=2, device="cuda", dtype="bf16", generation_backend="vllm",
                       vllm_gpu_memory_utilization=0.2))
    rows = _metrics(out)
    assert len(rows) == 2
    assert all(abs(r["policy/ratio_mean"] - 1) < 0.05 for r in rows)
    assert all(0 < r["response/length_mean"] <= 12 for r in rows)
