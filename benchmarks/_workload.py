"""The standard tiny benchmark workload, built the same way for our benchmarks and for the peers (TRL).

    python benchmarks/_workload.py DIR [--shape tiny|scale] [--response_length N] [--smoke]

writes into DIR: policy/ (LlamaForCausalLM + tokenizer), reward/ (LlamaForSequenceClassification, num_labels=1,
+ tokenizer + reward_config.json with gain 1, bias 0), prompts.jsonl ({"prompt_id", "prompt"}: texts that encode
to exactly 16 ids), prompt_ids.json (the same 64 x 16 ids) and workload.json (what was built). Every script builds
the workload in a child process (`ensure_workload`), so the one-off tokenizer training stays out of the peak RSS
that the benchmark reports, for us and the peers alike.

Tokenizer: byte-level BPE (ByteLevel(add_prefix_space=False), 256-byte initial alphabet) trained on
`corpus_sentences(20000, seed=0)`, with <pad> = 0 and <eos> = 1 and no BOS/UNK. The generated corpus is regular:
BPE runs out of merges at 1,802 tokens (every word is then one token), so the vocabulary is padded
deterministically with added tokens "<unused_1802>" ... "<unused_4095>" to exactly 4,096 (they never occur in the
prompts; a sampled one is an id like any other, PPO never re-tokenises).

This file imports only the standard library, torch, tokenizers, transformers and `rlhf.data.demo` (pure Python),
so it also runs in the TRL venv with the repository root on sys.path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the TRL venv does not have `rlhf` installed; its demo corpus is plain Python
    sys.path.append(str(ROOT))  # last: never shadows an installed `rlhf`

VOCAB, PAD, EOS = 4096, 0, 1
N_PROMPTS, PROMPT_LEN = 64, 16
N_SENTENCES = 20000
TINY_POLICY_PARAMS, TINY_SCALAR_PARAMS = 1_705_088, 1_180_928


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    response_length: int

    @property
    def max_positions(self) -> int:
        # 128 as specified; raised only when prompt + response would not fit (RoPE has no position parameters, so
        # the parameter count does not change)
        return max(128, PROMPT_LEN + self.response_length)


SHAPES = {
    "tiny": Shape("tiny", hidden=128, layers=4, heads=4, intermediate=256, response_length=32),
    # compute-bound: per-call overheads matter less, so the figures are not only about Python overhead
    "scale": Shape("scale", hidden=512, layers=8, heads=8, intermediate=1408, response_length=64),
}


def get_shape(name: str, response_length: int | None = None) -> Shape:
    shape = SHAPES[name]
    return replace(shape, response_length=response_length) if response_length else shape


def build_tokenizer(sentences: list[str]):
    """A `tokenizers.Tokenizer` with exactly VOCAB ids: BPE merges first, then deterministic padding tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer)
    n = tok.get_vocab_size()
    tok.add_tokens([f"<unused_{i}>" for i in range(n, VOCAB)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert (tok.token_to_id("<pad>"), tok.token_to_id("<eos>")) == (PAD, EOS)
    return tok


def hf_tokenizer(tok):
    """The Hugging Face wrapper the stages load: EOS and PAD set, no BOS (so nothing is added to a prompt)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", padding_side="left",
                                   model_max_length=1_000_000)


def make_prompts(tok, sentences: list[str]) -> list[list[int]]:
    """64 distinct prompts of exactly 16 ids, each the first 16 ids of a corpus sentence whose decoded text encodes
    back to the same 16 ids (so a prompts JSONL of text gives the stage exactly these ids)."""
    out, seen = [], set()
    for s in sentences:
        ids = tok.encode(s).ids[:PROMPT_LEN]
        if len(ids) < PROMPT_LEN or tuple(ids) in seen or tok.encode(tok.decode(ids)).ids != ids:
            continue
        seen.add(tuple(ids))
        out.append(ids)
        if len(out) == N_PROMPTS:
            return out
    raise RuntimeError(f"only {len(out)} of {N_PROMPTS} prompts of {PROMPT_LEN} ids round-trip; use more sentences")


def llama_config(shape: Shape, **extra):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                         intermediate_size=shape.intermediate, max_position_embeddings=shape.max_positions,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, **extra)
    config._attn_implementation = "sdpa"
    return config


def build_policy(shape: Shape):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(shape)).float()
    _check_params(model, shape, TINY_POLICY_PARAMS)
    return model


def build_scalar(shape: Shape):
    """The reward model (and, through the stages, the value model's initialisation)."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(llama_config(shape, num_labels=1)).float()
    _check_params(model, shape, TINY_SCALAR_PARAMS)
    return model


def _check_params(model, shape: Shape, tiny_expected: int) -> None:
    n = sum(p.numel() for p in model.parameters())
    if shape.name == "tiny" and (shape.hidden, shape.layers, shape.intermediate) == (128, 4, 256):
        assert n == tiny_expected, f"{type(model).__name__}: {n} parameters, expected {tiny_expected}"


def build(out: Path, shape: Shape, smoke: bool = False) -> dict:
    """Write the workload into `out` (see the module docstring); returns the workload.json contents."""
    from rlhf.data.demo import corpus_sentences

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    sentences = corpus_sentences(2000 if smoke else N_SENTENCES, seed=0)
    tok = build_tokenizer(sentences)
    prompts = make_prompts(tok, sentences)
    fast = hf_tokenizer(tok)
    policy, scalar = build_policy(shape), build_scalar(shape)
    policy.generation_config.bos_token_id = None
    for sub, model in (("policy", policy), ("reward", scalar)):
        model.save_pretrained(out / sub, safe_serialization=True)
        fast.save_pretrained(out / sub)
    # gain 1, bias 0: the raw head output is the score (no normalisation pass: that is not part of the workload)
    (out / "reward" / "reward_config.json").write_text(json.dumps(
        {"format": "rlhf-reward-v1", "gain": 1.0, "bias": 0.0, "source": "benchmarks/_workload.py"}))
    (out / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt_id": f"bench-{i:03d}", "prompt": tok.decode(ids)}) + "\n" for i, ids in enumerate(prompts)))
    (out / "prompt_ids.json").write_text(json.dumps(prompts))
    info = {"shape": asdict(shape), "smoke": smoke, "vocab": VOCAB, "bpe_vocab": sum(
        1 for t_ in tok.get_vocab() if not t_.startswith("<unused_")), "n_prompts": len(prompts),
        "prompt_len": PROMPT_LEN, "policy_params": sum(p.numel() for p in policy.parameters()),
        "scalar_params": sum(p.numel() for p in scalar.parameters()), "build_s": time.perf_counter() - t}
    (out / "workload.json").write_text(json.dumps(info, indent=2))  # written last: marks the folder complete
    return info


def ensure_workload(out: Path, shape: Shape, smoke: bool = False) -> dict:
    """Build the workload into `out` in a child process (unless it is already there) and return its info."""
    info_file = Path(out) / "workload.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info["shape"] == asdict(shape) and info["smoke"] == smoke:
            return info
        raise SystemExit(f"{out} holds a different workload ({info['shape']}, smoke={info['smoke']}); use another "
                         "--workload folder or delete it")
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--shape", shape.name,
           "--response_length", str(shape.response_length)] + (["--smoke"] if smoke else [])
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads(info_file.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description="build the benchmark workload into a folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--response_length", type=int, default=0, help="override the shape's response length")
    ap.add_argument("--smoke", action="store_true", help="a 2,000-sentence corpus (the vocabulary is still 4,096)")
    args = ap.parse_args()
    info = build(args.out, get_shape(args.shape, args.response_length or None), args.smoke)
    print(json.dumps(info))


if __name__ == "__main__":
    main()


def ppo_arg_parser(description: str):
    """The options every PPO benchmark (ours, the floor, TRL's) shares; parse with `parse_ppo_args`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--scale", action="store_true", help="the compute-bound shape (hidden 512, 8 layers, response 64)")
    ap.add_argument("--response_length", type=int, default=0, help="override the shape's response length")
    ap.add_argument("--batch", type=int, default=16, help="rollouts per update (4 minibatches of batch/4)")
    ap.add_argument("--updates", type=int, default=10, help="timed updates")
    ap.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the standard workload uses 2)")
    ap.add_argument("--workload", type=Path, help="a folder built by _workload.py (default: built in a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="one short update on a small corpus (for the tests)")
    return ap


def parse_ppo_args(ap):
    """Parse; --smoke means one update of response 8 (unless given) and no warm-up."""
    args = ap.parse_args()
    if args.smoke:
        args.updates, args.warmup, args.response_length = 1, 0, args.response_length or 8
    return args
