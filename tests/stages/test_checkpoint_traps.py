"""What a real checkpoint or a non-default precision does that a tiny model built here never shows: each test fails
on the code before its fix (the correctness issue's items 1-3 and 5-7).

Models are the families' tiny random stand-ins (tests/support/families.py), some edited to carry the trap: a
`generation_config.json` with sampling settings, a next token the policy is nearly sure of, a list of EOS ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.io import read_jsonl, write_jsonl
from rlhf.models.generation import generate, left_pad, response_forward, sample_with_logprobs, stop_token_ids
from rlhf.models.loading import load_causal_lm, load_tokenizer
from rlhf.stages import ppo, sample
from tests.models.families_helpers import rm_folder, write_data
from tests.support.families import FAMILIES, family_model, save_family

PROMPT = "the hotel near the station"


def _sure_of_a_prompt_token(folder: Path) -> tuple[int, float]:
    """Edit the llama stand-in so that after PROMPT its next token is, with probability ~0.95, a token that is already
    in the prompt (the case repetition_penalty and no_repeat_ngram_size change most). Returns (token, probability)."""
    tok = load_tokenizer(folder)
    lm = load_causal_lm(folder).eval()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    target = ids[0, -2].item()  # a prompt token, not the last one
    with torch.no_grad():
        h = lm.model(input_ids=ids).last_hidden_state[0, -1]
        z = lm(input_ids=ids).logits[0, -1]
        others = torch.logsumexp(torch.cat([z[:target], z[target + 1:]]), 0)
        need = others + torch.log(torch.tensor(0.95 / 0.05))  # the logit that gives the target p = 0.95
        lm.lm_head.weight[target] += (need - z[target]) * h / h.norm() ** 2  # logit_t moves by exactly that
        p = torch.softmax(lm(input_ids=ids).logits[0, -1], -1)[target].item()
    assert 0.93 < p < 0.995, p
    lm.save_pretrained(folder)
    return target, p


@pytest.fixture(scope="module")
def gen_folders(tmp_path_factory):
    """plain: the edited model with a neutral generation config; penalised: the same weights whose
    generation_config.json sets repetition_penalty 1.3 and no_repeat_ngram_size 1 (as many instruct checkpoints
    ship sampling settings)."""
    d = tmp_path_factory.mktemp("genconfig")
    plain = save_family("llama", d / "plain")
    target, p = _sure_of_a_prompt_token(plain)
    penalised = d / "penalised"
    penalised.mkdir()
    for f in plain.iterdir():
        (penalised / f.name).write_bytes(f.read_bytes())
    gc = json.loads((penalised / "generation_config.json").read_text())
    gc.update(repetition_penalty=1.3, no_repeat_ngram_size=1)
    (penalised / "generation_config.json").write_text(json.dumps(gc))
    return {"plain": plain, "penalised": penalised, "target": target, "p": p, "dir": d}


def test_sampled_tokens_follow_the_policy_whatever_the_checkpoint_generation_config(gen_folders):
    """Item 1: a checkpoint's repetition_penalty / no_repeat_ngram_size must not change what PPO samples: the first
    sampled token's frequency matches the policy's probability (no_repeat_ngram_size 1 alone would ban it), and
    `generate` and PPO's own sampler draw the same tokens."""
    tok = load_tokenizer(gen_folders["penalised"], padding_side="left")
    lm = load_causal_lm(gen_folders["penalised"]).eval()
    assert lm.generation_config.repetition_penalty == 1.3  # the setting is really in the loaded model
    n = 2000
    ids, mask = left_pad([tok(PROMPT)["input_ids"]] * n, tok.pad_token_id)
    torch.manual_seed(0)
    b = generate(lm, ids, mask, max_new_tokens=1, temperature=1.0, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)
    freq = (b.response_ids[:, 0] == gen_folders["target"]).float().mean().item()
    p = gen_folders["p"]
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(freq - p) < 5 * sigma, (freq, p)
    # the two samplers agree token for token on this checkpoint (3 steps, so the penalties would bite)
    few_ids, few_mask = left_pad([tok(PROMPT)["input_ids"]] * 16, tok.pad_token_id)
    kw = dict(max_new_tokens=3, temperature=1.0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    a = generate(lm, few_ids, few_mask, **kw)
    torch.manual_seed(1)
    s = sample_with_logprobs(lm, few_ids, few_mask, **kw)
    assert torch.equal(a.response_ids, s.response_ids)
    # the model's own config is untouched afterwards
    assert lm.generation_config.no_repeat_ngram_size == 1


def test_rlhf_sample_ignores_the_model_generation_config_unless_asked(gen_folders, tmp_path):
    """Item 1: `rlhf sample` writes the same responses for the same seed whether or not the folder's
    generation_config.json has sampling settings; --use_model_generation_config applies them and says so."""
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt_id": f"p{i}", "prompt": PROMPT} for i in range(12)])

    def run(folder: Path, name: str, **kw) -> list[dict]:
        out = sample.run(sample.SampleConfig(model=str(folder), prompts=str(prompts), k=2, max_new_tokens=6,
                                             out=str(tmp_path / f"{name}.jsonl"), device="cpu", seed=3, **kw))
        return read_jsonl(out)

    plain, penalised = run(gen_folders["plain"], "plain"), run(gen_folders["penalised"], "penalised")
    assert [r["responses"] for r in plain] == [r["responses"] for r in penalised]
    assert penalised[0]["sampling"]["use_model_generation_config"] is False
    opted = run(gen_folders["penalised"], "opted", use_model_generation_config=True)
    assert [r["responses"] for r in opted] != [r["responses"] for r in penalised]
    applied = opted[0]["sampling"]["model_generation_config"]
    assert applied["repetition_penalty"] == 1.3 and applied["no_repeat_ngram_size"] == 1


def test_every_eos_the_model_declares_ends_a_response(gen_folders, tmp_path):
    """Item 1 (EOS): a checkpoint that declares two EOS ids (e.g. <|im_end|> and <|eot_id|>) stops at either; the
    response mask, `ended`, the decoded text and the reward position (the last real token) all treat it as EOS."""
    folder = tmp_path / "two_eos"
    folder.mkdir()
    for f in gen_folders["plain"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tok = load_tokenizer(folder, padding_side="left")
    second = gen_folders["target"]  # the token the model is ~95% sure of after PROMPT
    gc = json.loads((folder / "generation_config.json").read_text())
    gc["eos_token_id"] = [tok.eos_token_id, second]
    (folder / "generation_config.json").write_text(json.dumps(gc))
    lm = load_causal_lm(folder).eval()
    eos = stop_token_ids(lm, tok)
    assert eos == [tok.eos_token_id, second]
    ids, mask = left_pad([tok(PROMPT)["input_ids"]] * 32, tok.pad_token_id)
    torch.manual_seed(0)
    b = generate(lm, ids, mask, max_new_tokens=8, temperature=1.0, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    first = b.response_ids[:, 0] == second
    assert first.float().mean() > 0.8
    assert b.ended[first].all() and (b.response_mask[first].sum(1) == 1).all()  # cut right after it
    # the reward model reads the last real token of prompt + response: that second EOS
    last = b.attention_mask.cumsum(1).argmax(1)
    assert (b.input_ids[first, last[first]] == second).all()
    # and `rlhf sample` reports those responses as ended, with the EOS not in the text
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt_id": "p0", "prompt": PROMPT}])
    rows = read_jsonl(sample.run(sample.SampleConfig(model=str(folder), prompts=str(prompts), k=8, max_new_tokens=8,
                                                     out=str(tmp_path / "s.jsonl"), device="cpu")))
    assert sum(rows[0]["ended"]) >= 6 and rows[0]["sampling"]["eos_token_ids"] == eos


# --- PPO on every family -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    data = write_data(d / "data")

    made: dict[str, tuple[Path, Path]] = {}

    def folders(name: str) -> tuple[Path, Path]:  # (policy, reward model), made once per family
        if name not in made:
            base = save_family(name, d / name)
            rm_base = base
            if name in ("granite", "cohere"):  # no *ForSequenceClassification: a Llama reward model, same tokenizer
                tok = load_tokenizer(base)
                rm_base = d / f"{name}_llama"
                family_model("llama", tok).save_pretrained(rm_base)
                tok.save_pretrained(rm_base)
            made[name] = (base, rm_folder(rm_base, d / f"{name}_rm"))
        return made[name]

    return {"data": data, "dir": d, "folders": folders}


def _ppo(family_runs, name, out, **kw):
    base, rm = family_runs["folders"](name)
    cfg = dict(policy=str(base), reward=str(rm), prompts=str(family_runs["data"]["prompts"]), out=str(out), updates=1,
               rollout_batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=6, save_every=0,
               log_samples_every=0, tensorboard=False, device="cpu", temperature=0.8)
    cfg.update(kw)
    return ppo.run(ppo.PPOConfig(**cfg))


@pytest.mark.parametrize("name,shared", [(n, False) for n in FAMILIES] + [("opt", False), ("granite", True),
                                                                        ("cohere", True)])
def test_first_minibatch_ratio_is_one_and_kl_zero_on_every_family(family_runs, tmp_path, name, shared):
    """Items 3 and 5: before the first optimiser step the training forward gives the rollout's log-probs (ratio 1)
    and the policy is its reference (KL 0) on every family: OPT, whose dropout rates live in float attributes
    (dropout 0.1 here), and Granite / Cohere with the shared value head, whose logits are scaled by the family's own
    output path (logits_scaling 8, logit_scale 1/16)."""
    out = _ppo(family_runs, name, tmp_path / "ppo", shared_value_head=shared)
    m = read_jsonl(out / "metrics.jsonl")[0]
    assert m["rollout/logprob_diff_max"] < 1e-5, m["rollout/logprob_diff_max"]
    assert abs(m["objective/kl"]) < 1e-4, m["objective/kl"]


def test_bf16_kl_is_zero_at_the_first_update(family_runs, tmp_path):
    """Item 6: a full fine-tune in bf16 (autocast over fp32 master weights): the reference runs in the policy's
    compute path, so KL is 0 at update 1 and the doctor's kl-nonzero-at-start stays quiet; a reference stored in
    bf16 (ref_dtype bf16) is the documented memory saving with a rounding offset."""
    from rlhf.diagnose import diagnose

    out = _ppo(family_runs, "llama", tmp_path / "bf16", dtype="bf16", rollout_batch_size=8, max_new_tokens=12)
    m = read_jsonl(out / "metrics.jsonl")[0]
    assert m["objective/kl"] == 0.0 and m["rollout/logprob_diff_max"] == 0.0
    assert "kl-nonzero-at-start" not in diagnose(out).rules_hit()
    off = read_jsonl(_ppo(family_runs, "llama", tmp_path / "bf16_ref", dtype="bf16", ref_dtype="bf16",
                          rollout_batch_size=8, max_new_tokens=12) / "metrics.jsonl")[0]
    assert off["objective/kl"] != 0.0  # the offset the fix removes is real


class _LossScaledCPU:
    """accelerate's fp16 loss-scaling path on a CPU: a real `Accelerator` whose GradScaler (torch's CPU GradScaler,
    scale 2^12) scales every backward, is unscaled by `clip_grad_norm_` / `unscale_gradients` and steps through
    `AcceleratedOptimizer`, exactly as under --dtype fp16 on a GPU; only the fp16 autocast is left out, so the
    update must equal the fp32 one (scaling by a power of 2 is exact)."""

    @staticmethod
    def make(device: str, mixed_precision: str, grad_accum: int = 1):
        from accelerate import Accelerator

        class Scaled(Accelerator):
            @property
            def mixed_precision(self):
                return "fp16"

            def autocast(self, *a, **k):  # no fp16 autocast (the reference's forward asks for the policy's)
                import contextlib

                return contextlib.nullcontext()

            def prepare_model(self, model, *a, **k):  # no fp16 autocast around the forward
                self.native_amp = False
                try:
                    return super().prepare_model(model, *a, **k)
                finally:
                    self.native_amp = True

        acc = Scaled(cpu=True)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=10**6)
        acc.native_amp = True
        return acc


def test_fp16_loss_scaling_updates_the_value_model_like_fp32(family_runs, tmp_path, monkeypatch):
    """Item 2: with loss scaling, clipping one model then stepping it reset the scaler's per-optimiser state, so the
    value model's gradients were unscaled a second time (a 1/4096 step). The policy and the separate value model
    must train exactly as without scaling."""
    import rlhf.models.precision as precision

    ref = _ppo(family_runs, "llama", tmp_path / "fp32", updates=2, max_grad_norm=1.0, value_lr=1e-3)
    monkeypatch.setattr(precision, "make_training_accelerator", _LossScaledCPU.make)
    scaled = _ppo(family_runs, "llama", tmp_path / "scaled", updates=2, max_grad_norm=1.0, value_lr=1e-3)
    init = load_file(family_runs["folders"]("llama")[1] / "model.safetensors")  # the value model starts as the RM
    trained = load_file(ref / "value" / "model.safetensors")
    assert max((trained[k] - init[k]).abs().max().item() for k in trained if k in init) > 1e-4  # it did learn
    for sub in ("", "value"):
        a, b = load_file(ref / sub / "model.safetensors"), load_file(scaled / sub / "model.safetensors")
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=f"{sub or 'policy'}: {k}")


def test_missing_eos_score_replaces_the_score(family_runs, tmp_path):
    """Item 7: lm-human-preferences' option: a response that never ends gets a fixed score."""
    out = _ppo(family_runs, "llama", tmp_path / "eos", max_new_tokens=2, missing_eos_score=-1.0)
    m = read_jsonl(out / "metrics.jsonl")[0]
    assert m["response/eos_fraction"] == 0.0  # 4 rollouts of 2 random tokens: none ends (seeded)
    assert m["objective/scores"] == -1.0


def test_a_positive_missing_eos_penalty_is_refused(capsys):
    """Item 7: TRL subtracts a positive missing_eos_penalty; here it is added, so a TRL user's 1.0 would reward
    responses that never end. It is one line naming the field and the convention."""
    from rlhf.cli import main

    assert main(["ppo", "--policy", "x", "--reward", "y", "--prompts", "z", "--missing_eos_penalty", "1.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing_eos_penalty" in err[0] and "-1.0" in err[0], err


def test_response_forward_matches_generate_scores_on_the_edited_model(gen_folders):
    """The edited checkpoint is still a plain LM: PPO's full forward gives the sampler's log-probs."""
    tok = load_tokenizer(gen_folders["penalised"], padding_side="left")
    lm = load_causal_lm(gen_folders["penalised"]).eval()
    ids, mask = left_pad([tok(PROMPT)["input_ids"]] * 4, tok.pad_token_id)
    torch.manual_seed(2)
    s = sample_with_logprobs(lm, ids, mask, max_new_tokens=4, temperature=1.0, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    logp, _, _ = response_forward(lm, s, 1.0)
    torch.testing.assert_close(s.logprobs, logp, atol=1e-5, rtol=0)


def test_doctor_flags_a_sampler_that_is_not_the_trained_policy(family_runs, tmp_path, monkeypatch):
    """The doctor rule for item 1's failure, as a user sees it: a rollout sampler that is not the policy PPO trains
    (here: an engine whose weights are never synced after the first update, the LoRA/vLLM sync bug) shows as a gap
    between the trainer's and the sampler's log-probs; the same run with the sampler in sync is quiet."""
    import copy

    import rlhf.models.generation as generation
    from rlhf.diagnose import diagnose

    kw = dict(updates=3, rollout_batch_size=8, max_new_tokens=12, lr=3e-3, rollout_logprobs="sampler")
    healthy = _ppo(family_runs, "llama", tmp_path / "healthy", **kw)
    real, stale = generation.sample_with_logprobs, {}

    def stale_sampler(model, *a, **k):  # the engine keeps the first update's weights
        stale.setdefault("model", copy.deepcopy(model))
        return real(stale["model"], *a, **k)

    monkeypatch.setattr(generation, "sample_with_logprobs", stale_sampler)
    broken = _ppo(family_runs, "llama", tmp_path / "stale", **kw)
    diffs = [r["rollout/logprob_diff_mean"] for r in read_jsonl(broken / "metrics.jsonl")]
    assert diffs[0] < 1e-5 and diffs[-1] > 1e-3, diffs  # in sync at update 1, then drifting
    hits = {f.rule: f for f in diagnose(broken).findings}
    assert "logprob-mismatch" in hits and "rollout/logprob_diff_mean" in hits["logprob-mismatch"].evidence
    assert "logprob-mismatch" not in diagnose(healthy).rules_hit()
