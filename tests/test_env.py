"""`rlhf doctor --env` (rlhf.diagnose.env): versions, devices, precision, memory, and known bad combinations."""

import io

import torch

from rlhf.diagnose import env
from tests.support.families import family_tokenizer


def _report(model=None):
    buf = io.StringIO()
    code = env.env_report(model, file=buf)
    return code, buf.getvalue()


def test_prints_versions_devices_precision_and_memory():
    code, out = _report()
    assert torch.__version__ in out
    for section in ("system:", "packages:", "devices:", "precision:"):
        assert section in out
    assert "memory" in out and "GiB free of" in out
    if not torch.cuda.is_available():
        assert "fp16" in out and "no (needs a CUDA GPU)" in out
    assert code == (1 if "WARNING" in out else 0)


def test_pad_equal_to_eos_is_a_warning(tmp_path):
    tok = family_tokenizer("gpt2")
    tok.pad_token = tok.eos_token  # what most fine-tuning scripts do to GPT-2
    tok.save_pretrained(tmp_path)
    code, out = _report(str(tmp_path))
    assert code == 1 and "WARNING" in out and "pad equals EOS" in out and "attention mask" in out
    assert "adds BOS" in out and "chat template" in out


def test_distinct_pad_and_missing_pad(tmp_path):
    family_tokenizer("qwen2").save_pretrained(tmp_path / "q")
    family_tokenizer("llama").save_pretrained(tmp_path / "l")
    code, out = _report(str(tmp_path / "q"))
    assert "pad equals EOS" not in out and "'<|endoftext|>'" in out
    code, out = _report(str(tmp_path / "l"))
    assert "no pad token; rlhf uses EOS as pad" in out


def test_unloadable_model_and_gpu_packages_without_a_gpu(tmp_path, monkeypatch):
    code, out = _report(str(tmp_path / "missing"))
    assert code == 1 and "could not load the tokenizer" in out
    if not torch.cuda.is_available():
        monkeypatch.setattr(env, "version", lambda p: "0.45.0" if p == "bitsandbytes" else None)
        r = env.collect()
        assert any("bitsandbytes is installed but no CUDA GPU" in n for n in r.notes)
