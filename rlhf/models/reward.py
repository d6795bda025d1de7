"""The reward model as PPO and evaluation use it: one or more scalar-head members, each with a (gain, bias) that
makes its reward mean 0 / std 1 on SFT samples (lm-human-preferences).

A folder written by `rlhf reward` is a plain Hugging Face `*ForSequenceClassification` (num_labels=1) model plus
its tokenizer and `reward_config.json`:

    {"format": "rlhf-reward-v1", "gain": g, "bias": b, "raw_mean": m, "raw_std": s, "n": N, "source": "...",
     "score_at": "last real token (attention mask)", "append_eos": true,
     "members": [{"path": ".", "gain": g0, "bias": b0}, {"path": "members/1", ...}]}   # ensembles only

The normalised reward of member i is gain_i * raw_i + bias_i, where raw_i is the head read at the last real token
of prompt + response (response ends with EOS when it ended). Text is encoded as `encode_prompt` + `encode_response`
so that training, normalisation and PPO see the same tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from rlhf.errors import UserError
from rlhf.models.chat import encode_chat_prompt, encode_chat_response, is_messages
from rlhf.models.scalar import score_at_last_token, score_with_shared_prefix

log = logging.getLogger(__name__)

REWARD_CONFIG = "reward_config.json"
FORMAT = "rlhf-reward-v1"


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Prompt ids: a string with the tokenizer's special tokens (e.g. BOS), as `rlhf sft` and `rlhf sample` encode
    prompts; a list of messages through the chat template with the generation prompt (rlhf.models.chat)."""
    if is_messages(prompt):
        return encode_chat_prompt(tokenizer, prompt)
    return tokenizer(prompt)["input_ids"]


def encode_response(tokenizer: Any, response: str | list[dict[str, str]], ended: bool = True,
                    prompt: str | list[dict[str, str]] | None = None) -> list[int]:
    """Response ids without special tokens, plus EOS if the response ended: the reward is then read at the EOS,
    as it is for PPO rollouts that stop by themselves (Stiennon et al. 2020 score at EOS). After a conversational
    prompt the response is the chat template's assistant turn, cut at (or ended with) EOS."""
    if is_messages(prompt) or is_messages(response):
        if not is_messages(prompt):
            raise UserError("a conversational response (list of messages) needs a conversational prompt")
        return encode_chat_response(tokenizer, prompt, response, ended)
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if ended else ids


class LastTokenScorer(torch.nn.Module):
    """Wraps one HF scalar-head model so `accelerate.prepare` (DDP/FSDP) sees a module whose forward returns the
    (B,) score at each row's last real token (mask-based, so any padding layout and pad == EOS both work)."""

    def __init__(self, model: PreTrainedModel, packed: bool = False):
        super().__init__()
        self.model = model
        self.packed = packed  # padding-free forwards where no layout is given (rlhf.models.packing)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layout: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """layout: a `shared_prefix_layout` of these rows: each group's common prefix is then computed once."""
        if layout is not None:
            return score_with_shared_prefix(self.model, layout)
        return score_at_last_token(self.model, input_ids, attention_mask, self.packed)


class RewardModel(torch.nn.Module):
    """members: HF scalar-head models; gains/biases: per-member normalisation. `gain`/`bias` are member 0's
    (the whole model's for a single member). `tokenizer_path`: the folder whose tokenizer the members expect."""

    def __init__(self, members: list[PreTrainedModel], gains: list[float], biases: list[float],
                 tokenizer_path: str = "", member_paths: list[str] | None = None):
        super().__init__()
        if not members or len(members) != len(gains) or len(gains) != len(biases):
            raise ValueError(f"RewardModel: need one gain and bias per member, got {len(members)} members, "
                             f"{len(gains)} gains, {len(biases)} biases")
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("gains", torch.tensor(gains, dtype=torch.float32), persistent=False)
        self.register_buffer("biases", torch.tensor(biases, dtype=torch.float32), persistent=False)
        self.gain_values, self.bias_values = [float(g) for g in gains], [float(b) for b in biases]
        self.tokenizer_path = tokenizer_path
        self.member_paths = member_paths or []
        self.packed = False  # padding-free forwards (rlhf.models.packing); the PPO loop sets its pack_sequences

    @property
    def gain(self) -> float:
        return self.gain_values[0]

    @property
    def bias(self) -> float:
        return self.bias_values[0]

    def raw_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (N, B) un-normalised head outputs at each row's last real token, one row per member."""
        return torch.stack([score_at_last_token(m, input_ids, attention_mask, self.packed) for m in self.members])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and mask -> (score (B,), member scores (N, B)), both normalised (float32).

        score = mean over members of gain_i * raw_i + bias_i. The mask may have zeros anywhere (a left-padded
        prompt followed by a right-padded response): positions come from the mask and the score is read at the
        last position whose mask is 1.
        """
        members = self.raw_scores(input_ids, attention_mask) * self.gains[:, None] + self.biases[:, None]
        return members.mean(0), members


def check_scalar_head(path: str | Path) -> None:
    """Refuse a model that has no trained scalar head: a causal LM (e.g. an SFT folder) would load with a freshly
    initialised random head, and PPO would then optimise noise. Checked from the model's config, before loading."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError):  # not a model folder or an unknown hub id: the loader below says so
        return
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"{path} is a {archs[0]}, not a reward model (no trained scalar head: one would be initialised "
                        f"at random); train one with `rlhf reward --model {path} --data PREFERENCES.jsonl` and pass "
                        "its output folder")
    if archs and getattr(config, "num_labels", 1) != 1:
        raise UserError(f"{path} is a classifier with {config.num_labels} labels, not a scalar reward model "
                        "(num_labels=1); pass a folder written by `rlhf reward`")


def load_reward_model(path: str | Path, dtype: str = "fp32", device: str | torch.device = "cpu") -> RewardModel:
    """Load a folder written by `rlhf reward` (or any scalar-head model folder / hub id: then gain 1, bias 0 and a
    warning). Weights are frozen (requires_grad False) and the model is in eval mode."""
    from rlhf.models.loading import load_scalar_model

    folder = Path(path)
    cfg_file = folder / REWARD_CONFIG
    if cfg_file.exists():
        try:
            rc = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_file}: not valid JSON ({e.msg} at line {e.lineno}); re-run `rlhf reward`") from None
        specs = rc.get("members") or [{"path": ".", "gain": rc.get("gain", 1.0), "bias": rc.get("bias", 0.0)}]
    else:
        log.warning("%s has no %s: using raw (un-normalised) rewards, gain 1 and bias 0; train it with `rlhf reward` "
                    "to normalise on SFT samples", path, REWARD_CONFIG)
        specs = [{"path": ".", "gain": 1.0, "bias": 0.0}]
    members, paths = [], []
    for spec in specs:
        member_path = folder / spec["path"] if spec["path"] != "." else path
        check_scalar_head(member_path)
        model = load_scalar_model(member_path, dtype=dtype)
        model.requires_grad_(False)
        members.append(model.eval())
        paths.append(str(member_path))
    rm = RewardModel(members, [float(s["gain"]) for s in specs], [float(s["bias"]) for s in specs],
                     tokenizer_path=str(path), member_paths=paths)
    return rm.to(device).eval()
