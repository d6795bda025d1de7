"""Every precision/memory option is really applied or refused with its reason, never silently ignored:
bf16/fp16, gradient checkpointing, max_grad_norm, 4/8-bit loading, the vLLM backend, and the device."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.llama.modeling_llama import LlamaMLP

from rlhf.errors import ConfigError, UserError
from rlhf.models import precision
from rlhf.stages import ppo, reward, sample, sft
from tests.models.families_helpers import count_training_forwards, record_forwards, record_grad_norms, rm_folder, write_data
from tests.support.families import save_family

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("options")
    data = write_data(d / "data")
    base = save_family("llama", d / "base")
    return {**data, "base": base, "rm": rm_folder(base, d / "rm")}


def _sft(setup, out, **kw):
    return sft.SFTConfig(**{**dict(model=str(setup["base"]), data=str(setup["pairs"]), out=str(out), max_steps=2,
                                   batch_size=6, lr=1e-3, warmup_steps=0, save_every=0, log_every=1, device="cpu"),
                            **kw})


def _reward(setup, out, **kw):
    return reward.RewardConfig(**{**dict(model=str(setup["base"]), data=str(setup["prefs"]), out=str(out),
                                         max_steps=2, batch_size=6, eval_fraction=0, save_every=0, log_every=1,
                                         device="cpu"), **kw})


def _ppo(setup, out, **kw):
    return ppo.PPOConfig(**{**dict(policy=str(setup["base"]), reward=str(setup["rm"]), prompts=str(setup["prompts"]),
                                   out=str(out), updates=1, rollout_batch_size=4, num_minibatches=2, ppo_epochs=1,
                                   max_new_tokens=6, lr=1e-3, save_every=0, log_samples_every=0, tensorboard=False,
                                   device="cpu"), **kw})


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# --- dtype -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, compute", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_sft_dtype_is_autocast_over_fp32_master_weights(setup, tmp_path, dtype, compute):
    with record_forwards(torch.nn.Linear) as seen:
        out = sft.run(_sft(setup, tmp_path / dtype, dtype=dtype))
    train = [s for s in seen if s[1] and s[2]]
    assert train and {s[3] for s in train} == {compute}  # every training matmul ran in the compute dtype
    assert {s[4] for s in train} == {torch.float32}  # on fp32 master weights
    assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {compute}  # saved in dtype


def test_ppo_bf16_autocasts_rollouts_and_updates_and_keeps_ratio_one(setup, tmp_path, monkeypatch):
    ratios = []
    real = ppo.ppo_policy_loss

    def spy(logp, old_logp, advantages, mask, clip_range):
        ratios.append(float((logp.detach() - old_logp)[mask].abs().max()))
        return real(logp, old_logp, advantages, mask, clip_range)

    monkeypatch.setattr(ppo, "ppo_policy_loss", spy)
    with record_forwards(torch.nn.Linear) as seen:
        ppo.run(_ppo(setup, tmp_path / "bf16", dtype="bf16"))
    trained = [s for s in seen if s[4] == torch.float32]  # policy and value: fp32 master weights
    frozen = [s for s in seen if s[4] == torch.bfloat16]  # reference and reward model: stored in bf16
    assert trained and frozen
    assert {s[3] for s in trained} == {torch.bfloat16}  # rollout, scoring and training forwards all autocast
    assert any(not s[2] for s in trained) and any(s[2] for s in trained)  # both no-grad rollouts and updates seen
    assert ratios[0] == 0.0  # rollout and update use the same autocast: the first ratio is exactly 1


@NO_GPU
def test_fp16_is_refused_on_cpu_in_every_stage(setup, tmp_path):
    for run, cfg in [(sft.run, _sft(setup, tmp_path / "s", dtype="fp16")),
                     (reward.run, _reward(setup, tmp_path / "r", dtype="fp16")),
                     (ppo.run, _ppo(setup, tmp_path / "p", dtype="fp16")),
                     (sample.run, sample.SampleConfig(model=str(setup["base"]), prompts=str(setup["prompts"]),
                                                      out=str(tmp_path / "x.jsonl"), dtype="fp16", device="cpu"))]:
        with pytest.raises(UserError, match="fp16 needs a CUDA GPU.*use bf16 or fp32"):
            run(cfg)


@NO_GPU
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run(setup, tmp_path):
    with pytest.raises(UserError, match="cuda was asked for but no CUDA GPU is visible"):
        sft.run(_sft(setup, tmp_path / "c", device="cuda"))


# --- gradient checkpointing --------------------------------------------------------------------------------------


def test_sft_gradient_checkpointing_recomputes_layers_and_gives_the_same_weights(setup, tmp_path):
    runs = {}
    for gc in (False, True):
        with count_training_forwards(LlamaMLP) as calls:
            out = sft.run(_sft(setup, tmp_path / str(gc), gradient_checkpointing=gc))
        runs[gc] = (calls[0], load_file(out / "model.safetensors"))
    assert runs[True][0] == 2 * runs[False][0] > 0  # every layer's forward is run again in the backward pass
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, atol=1e-6, rtol=1e-5)


def test_reward_and_ppo_gradient_checkpointing_recompute_layers(setup, tmp_path):
    # the plain reward forward (shared_prefix splits it in two: prompts, then responses); with checkpointing the
    # default shared_prefix=true must turn itself off (transformers drops the KV cache it needs there)
    for name, run, make, kw in (("reward", reward.run, _reward, {"shared_prefix": False}), ("ppo", ppo.run, _ppo, {})):
        calls = {}
        for gc in (False, True):
            with count_training_forwards(LlamaMLP) as n:
                run(make(setup, tmp_path / f"{name}{gc}", gradient_checkpointing=gc, **({} if gc else kw)))
            calls[gc] = n[0]
        assert calls[True] == 2 * calls[False] > 0, (name, calls)  # PPO: both the policy and the value model


def test_gradient_checkpointing_on_a_model_without_support_is_refused(setup):
    from rlhf.models.loading import load_causal_lm

    model = load_causal_lm(setup["base"])
    model.supports_gradient_checkpointing = False
    with pytest.raises(UserError, match="does not support gradient checkpointing; turn it off"):
        precision.enable_gradient_checkpointing(model)


# --- max_grad_norm -----------------------------------------------------------------------------------------------


def test_sft_max_grad_norm_clips_the_gradient_the_optimiser_sees(setup, tmp_path):
    with record_grad_norms() as clipped:
        out = sft.run(_sft(setup, tmp_path / "clip", max_grad_norm=0.01))
    raw = [r["sft/grad_norm"] for r in _metrics(out) if "sft/grad_norm" in r]
    assert min(raw) > 0.01  # the clip had something to do
    assert clipped and max(clipped) <= 0.01 * 1.001
    with record_grad_norms() as free:
        sft.run(_sft(setup, tmp_path / "free", max_grad_norm=0.0))
    assert max(free) > 0.01


def test_ppo_max_grad_norm_clips_policy_and_value(setup, tmp_path):
    with record_grad_norms(per_group=True) as clipped:
        ppo.run(_ppo(setup, tmp_path / "clip", max_grad_norm=1e-4))
    with record_grad_norms(per_group=True) as free:
        ppo.run(_ppo(setup, tmp_path / "free", max_grad_norm=0.0))
    # one optimiser with two parameter groups (policy, value), 2 minibatches: each model is clipped on its own
    assert len(clipped) == len(free) == 2 * 2
    assert max(clipped) <= 1e-4 * 1.001
    assert min(free) > 1e-4  # each model had a larger gradient to clip


# --- 4/8-bit loading ---------------------------------------------------------------------------------------------


@NO_GPU
def test_4bit_loading_is_refused_with_the_reason_in_every_training_stage(setup, tmp_path):
    for run, cfg in [(sft.run, _sft(setup, tmp_path / "s", load_in="4bit", lora_r=8)),
                     (reward.run, _reward(setup, tmp_path / "r", load_in="4bit", lora_r=8)),
                     (ppo.run, _ppo(setup, tmp_path / "p", load_in="4bit", lora_r=8, shared_value_head=True))]:
        with pytest.raises(UserError, match="4bit loading cannot apply: no CUDA GPU is visible"):
            run(cfg)
    with pytest.raises(ConfigError, match="separate value model cannot be trained in 4/8-bit"):
        _ppo(setup, tmp_path / "p", load_in="4bit", lora_r=8).validate()


def test_4bit_config_is_qlora_and_needs_lora(monkeypatch):
    monkeypatch.setattr(precision, "bitsandbytes_unavailable", lambda: None)  # as on a GPU with bitsandbytes
    with pytest.raises(UserError, match="cannot be trained directly; add --lora_r"):
        precision.quantization_config("4bit", "bf16", lora_r=0)
    q = precision.quantization_config("4bit", "bf16", lora_r=16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert precision.quantization_config("8bit", "fp32", lora_r=16).load_in_8bit
    assert precision.quantization_config("", "fp32", lora_r=0) is None


# --- vLLM --------------------------------------------------------------------------------------------------------


@NO_GPU
def test_vllm_backend_is_refused_with_the_reason(setup, tmp_path):
    with pytest.raises(UserError, match="vllm cannot be used: no CUDA GPU is visible.*generation_backend transformers"):
        ppo.run(_ppo(setup, tmp_path / "v", generation_backend="vllm"))
    assert not (tmp_path / "v" / "metrics.jsonl").exists()  # refused before any work


def test_vllm_backend_where_it_could_run_is_refused_only_for_several_processes(monkeypatch):
    monkeypatch.setattr(precision, "vllm_unavailable", lambda: None)
    precision.check_generation_backend("vllm")  # one process with a GPU and vllm: accepted
    with pytest.raises(UserError, match="single process.*2 were launched"):
        precision.check_generation_backend("vllm", processes=2)
    with pytest.raises(UserError, match="unknown 'fast'"):
        precision.check_generation_backend("fast")
    precision.check_generation_backend("transformers")  # the default always works


# --- enumerated options: Literal fields, checked when the config is built ---------------------------------------

ENUMERATED = {  # every enumerated option of every stage: all must be Literal-typed (the CLI, YAML and --help agree)
    "sft": ("schedule", "dtype", "device", "load_in"),
    "sample": ("dtype", "device"),
    "reward": ("schedule", "ties", "dtype", "device", "load_in"),
    "ppo": ("value_head_init", "gold", "kl_estimator", "lr_schedule", "dtype", "load_in", "rollout_logprobs",
            "generation_backend", "device"),
    "eval": ("gold", "dtype", "device"),
    "demo": ("preset", "device"),
}


def _config_class(stage):
    import importlib

    from rlhf.cli import STAGES

    module, cls_name, _ = STAGES[stage]
    return getattr(importlib.import_module(module), cls_name)


@pytest.mark.parametrize("stage", ENUMERATED)
def test_every_enumerated_option_is_refused_in_one_line_naming_field_value_and_choices(stage, capsys):
    from rlhf.cli import main
    from rlhf.config import _field_types, choices_of, show_choice

    types_ = _field_types(_config_class(stage))
    for name in ENUMERATED[stage]:
        assert choices_of(types_[name]), f"{stage}.{name} is not a Literal"
    for name in [n for n, tp in types_.items() if choices_of(tp)]:  # the list above and any Literal added since
        choices = choices_of(types_[name])
        assert main([stage, f"--{name}", "bogus"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"field '{name}'" in err and "'bogus'" in err, err
        assert "use one of " + ", ".join(show_choice(c) for c in choices) in err, err


def test_acceptance_cases_name_the_field_and_the_fix(capsys):
    from rlhf.cli import main

    assert main(["ppo", "--dtype", "fp64"]) == 2
    assert "field 'dtype' of PPOConfig: unknown value 'fp64' (did you mean fp16?); use one of fp32, bf16, fp16" in \
        capsys.readouterr().err
    assert main(["sample", "--device", "gpu"]) == 2  # was a silent CPU run
    assert "field 'device' of SampleConfig: unknown value 'gpu'; use one of auto, cpu, cuda" in capsys.readouterr().err


def test_literal_values_from_yaml_and_python_names(tmp_path):
    from rlhf.config import build_config, load_config

    cfg = build_config(ppo.PPOConfig, {"policy": "p", "reward": "r", "prompts": "x", "kl_estimator": "k2"})
    assert cfg.kl_estimator == "k2"  # the estimator rlhf.core supports (it was refused by a "k1 or k3" message)
    (tmp_path / "c.yaml").write_text("sft:\n  data: x.jsonl\n  schedule: cosin\n")
    with pytest.raises(ConfigError, match=r"c.yaml \[sft\]: field 'schedule' .*'cosin' \(did you mean cosine\?\)"):
        load_config(sft.SFTConfig, tmp_path / "c.yaml", section="sft")
    assert build_config(sft.SFTConfig, {"data": "x", "load_in": ""}).load_in == ""


def test_demo_presets_and_their_literal_agree():
    import typing

    from rlhf.stages import demo

    assert set(typing.get_args(demo.Preset)) == set(demo.PRESETS)


def test_validate_checks_the_choices_of_a_config_made_in_python():
    with pytest.raises(ConfigError, match=r"config field 'device': unknown value 'gpu'; use one of auto, cpu, cuda"):
        sample.SampleConfig(model="m", prompts="p", device="gpu").validate()
    with pytest.raises(ConfigError, match=r"config field 'kl_estimator': unknown value 'k4'; use one of k1, k2, k3"):
        ppo.PPOConfig(policy="p", reward="r", prompts="x", kl_estimator="k4").validate()
    ppo.PPOConfig(policy="p", reward="r", prompts="x", kl_estimator="k2").validate()
