"""The vLLM rollout backend: the layout conversion, weight names and LoRA merge, and the sampler's calls into vLLM
(against a stand-in) on the CPU; the refusal where vLLM cannot run; one real run on a GPU with vllm installed."""

from __future__ import annotations

import copy
import sys
from types import SimpleNamespace

import pytest
import torch

from rlhf.errors import UserError
from rlhf.models.generation import truncate_after_eos
from rlhf.models.precision import vllm_unavailable
from rlhf.models.value import PolicyWithValueHead
from rlhf.models.vllm_backend import VLLMSampler, hf_weight_name, outputs_to_batch, policy_weights

VLLM_REASON = vllm_unavailable()
PAD, EOS = 0, 1  # the test tokenizer's ids


def test_outputs_to_batch_layout():
    b = outputs_to_batch([[5, 6, 7], [8]], [[10, EOS, 11], [12, 13]], EOS, PAD)
    assert b.prompt_ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert b.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.response_ids.tolist() == [[10, EOS, PAD], [12, 13, PAD]]
    assert b.response_mask.tolist() == [[True, True, False], [True, True, False]]
    assert b.ended.tolist() == [True, False]
    assert b.prompt_mask.dtype == torch.long and b.response_mask.dtype == torch.bool
    assert b.logprobs is None and b.entropy is None
    assert b.input_ids.shape == (2, 6)


def test_outputs_to_batch_pad_id_equal_to_eos_id():
    b = outputs_to_batch([[5], [6]], [[10, 11], [12]], eos_token_id=EOS, pad_token_id=EOS)
    assert b.response_ids.tolist() == [[10, 11], [12, EOS]]
    assert b.response_mask.tolist() == [[True, True], [True, False]]
    assert b.ended.tolist() == [False, False]  # the padding is not an EOS
    b = outputs_to_batch([[5]], [[10, EOS, 11]], eos_token_id=EOS, pad_token_id=EOS)
    assert b.response_ids.tolist() == [[10, EOS, EOS]] and b.response_mask.tolist() == [[True, True, False]]
    assert b.ended.tolist() == [True]


def test_outputs_to_batch_eos_first_and_empty_responses():
    b = outputs_to_batch([[5], [6]], [[EOS, 9, 9], []], EOS, PAD)
    assert b.response_ids.tolist() == [[EOS, PAD, PAD], [PAD, PAD, PAD]]
    assert b.response_mask.tolist() == [[True, False, False], [False, False, False]]
    assert b.ended.tolist() == [True, False]
    b = outputs_to_batch([[5], [6]], [[], []], EOS, PAD)  # at least one column, all padding
    assert b.response_ids.tolist() == [[PAD], [PAD]] and not b.response_mask.any() and not b.ended.any()


def test_outputs_to_batch_matches_the_transformers_layout():
    g = torch.Generator().manual_seed(0)
    full = torch.randint(0, 6, (8, 7), generator=g)  # full-length rows, EOS (1) anywhere or nowhere
    b = outputs_to_batch([[3]] * 8, full.tolist(), EOS, PAD)
    ids, mask, ended = truncate_after_eos(full, EOS, PAD)
    assert torch.equal(b.response_ids, ids) and torch.equal(b.response_mask, mask) and torch.equal(b.ended, ended)


def test_outputs_to_batch_keeps_the_engine_logprobs_and_every_eos_id():
    """With is_correction the engine's log-probs of the sampled tokens come along (0 after the EOS that ends a
    response); a second declared EOS id (7) ends a response too."""
    b = outputs_to_batch([[5], [6]], [[10, 7, 11], [12, EOS]], [EOS, 7], PAD, logprobs=[[-0.5, -0.25, -3.0], [-1.0, -2.0]])
    assert b.response_ids.tolist() == [[10, 7, PAD], [12, EOS, PAD]] and b.ended.tolist() == [True, True]
    assert b.logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, 0.0]]
    with pytest.raises(ValueError, match="one log-prob per response token"):
        outputs_to_batch([[5]], [[10, 11]], EOS, PAD, logprobs=[[-0.5]])


def test_outputs_to_batch_rejects_a_count_mismatch():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        outputs_to_batch([[1], [2]], [[3]], EOS, PAD)


def test_hf_weight_name():
    assert hf_weight_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_weight_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert hf_weight_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert hf_weight_name("base_model.model.model.embed_tokens.lora_embedding_B.default") is None
    assert hf_weight_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert hf_weight_name("base_model.model.lm_head.original_module.weight") is None


def test_policy_weights_of_a_plain_model_and_a_value_head_policy(tiny_lm):
    state = tiny_lm.state_dict()
    for model in (tiny_lm, PolicyWithValueHead(tiny_lm)):
        got = dict(policy_weights(model))
        assert got.keys() == state.keys()  # the value head is not the LM's
        assert all(got[k].data_ptr() == state[k].data_ptr() for k in state)  # no copies


def test_policy_weights_merge_lora_without_touching_the_model(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_lm), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = dict(policy_weights(model))
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert got.keys() == expected.keys() == tiny_lm.state_dict().keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], tiny_lm.state_dict()[q])  # the adapter is in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    with model.disable_adapter():
        plain = dict(policy_weights(model))
    torch.testing.assert_close(plain[q], tiny_lm.state_dict()[q])


class FakeLLM:
    """Stands in for `vllm.LLM`: records the calls; `apply_model` runs the function on a fake vLLM model."""

    def __init__(self, completions=(), param_names=()):
        self.completions, self.param_names = completions, list(param_names)
        self.calls, self.loaded, self.log = [], [], []

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append((prompts, sampling_params))
        done = self.completions[:len(prompts)]
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=t, finish_reason=r)]) for t, r in done]

    def apply_model(self, fn):
        llm = self

        class Model:
            def load_weights(self, weights):
                llm.loaded = list(weights)
                return {n for n, _ in llm.loaded}

            def named_parameters(self):
                return [(n, None) for n in llm.param_names]

        return [fn(Model())]

    def reset_prefix_cache(self):
        self.log.append("reset_prefix_cache")

    def sleep(self, level):
        self.log.append(f"sleep {level}")

    def wake_up(self):
        self.log.append("wake_up")


def bare_sampler(llm, sleep_mode=False):
    s = object.__new__(VLLMSampler)
    s._llm, s._dtype, s.max_model_len, s.device = llm, torch.bfloat16, 32, "cpu"
    s._sleep_enabled, s._asleep = sleep_mode, False
    return s


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: kw))


def test_sample_maps_the_options_and_builds_the_layout(fake_vllm):
    # the third output stopped at EOS but left it out (as a version might): it is put back
    llm = FakeLLM([((10, EOS), "stop"), ((11, 12, 13), "length"), ((14,), "stop")])
    s = bare_sampler(llm)
    b = s.sample([[5, 6], [7], [8, 9, 9]], max_new_tokens=3, temperature=0.7, top_p=0.9, top_k=0, eos_token_id=EOS,
                 pad_token_id=PAD, min_new_tokens=1, seed=5)
    prompts, params = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}, {"prompt_token_ids": [8, 9, 9]}]
    p = params[0]
    assert (p["temperature"], p["top_p"], p["top_k"], p["max_tokens"], p["min_tokens"]) == (0.7, 0.9, -1, 3, 1)
    assert (p["ignore_eos"], p["stop_token_ids"], p["detokenize"], p["n"]) == (False, [EOS], False, 1)
    seeds = [q["seed"] for q in params]
    assert len(set(seeds)) == 3  # one seed per prompt
    assert b.prompt_ids.tolist() == [[PAD, 5, 6], [PAD, PAD, 7], [8, 9, 9]]
    assert b.response_ids.tolist() == [[10, EOS, PAD], [11, 12, 13], [14, EOS, PAD]]
    assert b.ended.tolist() == [True, False, True]
    assert b.response_mask.tolist() == [[True, True, False], [True, True, True], [True, True, False]]

    s.sample([[5]], max_new_tokens=3, top_k=5, eos_token_id=EOS, pad_token_id=PAD, stop_at_eos=False, seed=5)
    q = llm.calls[1][1][0]
    assert (q["ignore_eos"], q["stop_token_ids"], q["top_k"], q["seed"]) == (True, None, 5, seeds[0])
    s.sample([[5]], max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    assert llm.calls[2][1][0]["seed"] is None
    with pytest.raises(UserError, match="max_model_len 32"):
        s.sample([[5] * 30], max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)


def test_sync_weights_loads_hf_names_in_the_engine_dtype(tiny_lm):
    state = tiny_lm.state_dict()
    llm = FakeLLM(param_names=state)
    bare_sampler(llm).sync_weights(tiny_lm)
    assert [n for n, _ in llm.loaded] == list(state)
    for name, t in llm.loaded:
        assert t.dtype == torch.bfloat16 and torch.equal(t, state[name].to(torch.bfloat16))
    assert llm.log == ["reset_prefix_cache"]  # the prefix cache holds KV of the old weights

    llm = FakeLLM(param_names=[*state, "model.extra.weight"])
    with pytest.raises(RuntimeError, match="1 vLLM parameters unloaded"):
        bare_sampler(llm).sync_weights(tiny_lm)


def test_sleep_then_sync_and_sample_wake_the_engine_once(fake_vllm, tiny_lm):
    llm = FakeLLM([((10, EOS), "stop")], param_names=tiny_lm.state_dict())
    s = bare_sampler(llm, sleep_mode=True)
    s.sleep()
    s.sleep()
    s.sync_weights(tiny_lm)
    s.sample([[5]], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)
    assert llm.log == ["sleep 1", "wake_up", "reset_prefix_cache"]
    with pytest.raises(RuntimeError, match="enable_sleep_mode"):
        bare_sampler(FakeLLM()).sleep()


@pytest.mark.skipif(VLLM_REASON is None, reason="vLLM can run here")
def test_sampler_refuses_where_vllm_cannot_run(tmp_path):
    with pytest.raises(UserError) as e:
        VLLMSampler(str(tmp_path), dtype="bf16", seed=0, max_model_len=64)
    assert VLLM_REASON in str(e.value) and "generation_backend: transformers" in str(e.value)


@pytest.mark.skipif(VLLM_REASON is not None, reason=f"vLLM backend cannot run here: {VLLM_REASON}")
def test_vllm_sampler_on_gpu_layout_and_weight_sync(tokenizer, tmp_path):
    from rlhf.models.registry import build_tiny_causal_lm

    # head_dim 64, which every vLLM attention backend supports (the default tiny config has 16)
    model = build_tiny_causal_lm("tiny", tokenizer, seed=0, hidden_size=128, num_attention_heads=2,
                                 num_key_value_heads=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    sampler = VLLMSampler(str(tmp_path), dtype="bf16", seed=0, max_model_len=128, gpu_memory_utilization=0.2,
                          enforce_eager=True)
    prompts = [tokenizer.encode(t) for t in ("the hotel was", "a boring", "the staff were friendly and the", "i")]
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=EOS, pad_token_id=PAD, seed=3)

    b = sampler.sample(prompts, **kw)
    assert b.response_ids.device.type == "cuda" and b.logprobs is None and b.entropy is None
    for i, p in enumerate(prompts):
        assert b.prompt_ids[i, -len(p):].tolist() == p and int(b.prompt_mask[i].sum()) == len(p)
        n = int(b.response_mask[i].sum())
        assert b.response_mask[i].tolist() == [j < n for j in range(b.response_ids.shape[1])]
        assert (b.response_ids[i, n:] == PAD).all()
        real = b.response_ids[i, :n].tolist()
        assert bool(b.ended[i]) == (EOS in real)
        if b.ended[i]:
            assert real[-1] == EOS and EOS not in real[:-1]
        else:
            assert n == kw["max_new_tokens"]
    assert b.response_ids.shape[1] <= kw["max_new_tokens"]
    assert not (b.response_ids[:, 0] == EOS).all()  # a random model does not stop at once
    again = sampler.sample(prompts, **kw)
    assert torch.equal(again.response_ids, b.response_ids)  # seeded

    # make every next token EOS: no attention/MLP output, all-ones embeddings, an lm_head that only scores EOS
    model.to("cuda")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[EOS].fill_(1.0)
        assert int(model(torch.tensor([prompts[0]], device="cuda")).logits[0, -1].argmax()) == EOS
    sampler.sync_weights(model)

    b = sampler.sample(prompts, **kw)
    assert b.response_ids.tolist() == [[EOS]] * 4 and b.response_mask.all() and b.ended.all()
    b = sampler.sample(prompts, **{**kw, "min_new_tokens": 3})  # EOS blocked for 3 tokens, then certain
    assert b.response_ids.shape[1] == 4 and (b.response_ids[:, 3] == EOS).all() and b.ended.all()
    assert not (b.response_ids[:, :3] == EOS).any()
    b = sampler.sample(prompts, **{**kw, "stop_at_eos": False})  # fixed length, cut after the first EOS
    assert b.response_ids.shape[1] == kw["max_new_tokens"] and (b.response_ids[:, 0] == EOS).all()
    assert b.response_mask.sum(1).tolist() == [1] * 4 and (b.response_ids[:, 1:] == PAD).all()
