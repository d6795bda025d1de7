"""Tiny, randomly initialised stand-ins for the model families users bring (Llama, Qwen2, Mistral, Gemma, GPT-2,
Pythia/GPT-NeoX): the real architecture class built from a small config, and a tokenizer trained here that behaves
like the family's own in the ways our code can trip over. No downloads.

| family   | model_type | BOS added | pad token           | padding side | chat template        | embeddings |
|----------|------------|-----------|---------------------|--------------|----------------------|------------|
| llama    | llama      | yes       | none (we set EOS)   | right        | Llama 3 headers      | untied     |
| qwen2    | qwen2      | no        | <|endoftext|> != EOS | right        | ChatML, EOS <|im_end|> | tied     |
| mistral  | mistral    | yes       | none (we set EOS)   | left         | [INST] ... [/INST]   | untied     |
| gemma    | gemma      | yes       | <pad>               | left         | <start_of_turn>      | tied, scaled |
| gpt2     | gpt2       | no        | none (EOS == BOS)   | right        | none                 | tied       |
| gpt_neox | gpt_neox   | no        | none (EOS == BOS)   | right        | none                 | untied     |

Gemma's embeddings are scaled by sqrt(hidden); GPT-NeoX's untied output layer is `embed_out`.
`save_family(name, folder)` writes a model folder that `rlhf sft --model FOLDER` (or any stage) loads like a
downloaded checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from rlhf.errors import UserError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% else %}{{ m['content'] }}\n\n"
    "{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# the layer sizes shared by every family: ~0.1M parameters besides the embeddings
_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)


@dataclass(frozen=True)
class Family:
    model_type: str
    config: dict[str, Any]
    specials: list[str]  # special tokens, in id order from 0
    bos: str | None  # the BOS token (None: the family has none)
    eos: str
    pad: str | None  # None: the tokenizer has no pad token (load_tokenizer sets one and says so)
    add_bos: bool  # every encoded text starts with BOS
    padding_side: str
    chat_template: str | None
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", dict(_SIZE, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6),
                    ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                     "<|end_header_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, add_bos=True,
                    padding_side="right", chat_template=LLAMA3_TEMPLATE),
    "qwen2": Family("qwen2", dict(_SIZE, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6),
                    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                    pad="<|endoftext|>", add_bos=False, padding_side="right", chat_template=CHATML_TEMPLATE),
    "mistral": Family("mistral", dict(_SIZE, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6,
                                      sliding_window=None),
                      ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, add_bos=True, padding_side="left",
                      chat_template=MISTRAL_TEMPLATE, extra={"unk_token": "<unk>"}),
    "gemma": Family("gemma", dict(_SIZE, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                                  rms_norm_eps=1e-6),
                    ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>",
                    pad="<pad>", add_bos=True, padding_side="left", chat_template=GEMMA_TEMPLATE),
    "gpt2": Family("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=256,
                                tie_word_embeddings=True),
                   ["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None, add_bos=False,
                   padding_side="right", chat_template=None),
    "gpt_neox": Family("gpt_neox", dict(_SIZE, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False),
                       ["<|endoftext|>", "<|padding|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                       add_bos=False, padding_side="right", chat_template=None),
}

# Families outside the main matrix, each for one trap: OPT copies its dropout rates into float attributes at init
# (a config edit does not turn them off); Granite divides its logits by `logits_scaling`, Cohere multiplies them by
# `logit_scale` (an output path that skips the LM's own forward gets them wrong).
MORE_FAMILIES: dict[str, Family] = {
    "opt": Family("opt", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=256, word_embed_proj_dim=64, dropout=0.1, attention_dropout=0.1,
                              activation_dropout=0.1),
                  ["<s>", "<pad>", "</s>", "<unk>"], bos="</s>", eos="</s>", pad="<pad>", add_bos=True,
                  padding_side="right", chat_template=None, extra={"unk_token": "<unk>"}),
    "granite": Family("granite", dict(_SIZE, num_key_value_heads=2, logits_scaling=8.0, embedding_multiplier=12.0,
                                      residual_multiplier=0.22, attention_multiplier=0.0625, tie_word_embeddings=True),
                      ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"], bos=None, eos="<|end_of_text|>",
                      pad=None, add_bos=False, padding_side="left", chat_template=None),
    "cohere": Family("cohere", dict(_SIZE, num_key_value_heads=2, logit_scale=0.0625, tie_word_embeddings=True),
                     ["<PAD>", "<BOS_TOKEN>", "<EOS_TOKEN>"], bos="<BOS_TOKEN>", eos="<EOS_TOKEN>", pad="<PAD>",
                     add_bos=True, padding_side="left", chat_template=None),
}

CORPUS = [
    "the blender works well and the price was fair.",
    "this film was slow and the ending felt cheap.",
    "the hotel near the station was clean and quiet.",
    "i bought this lamp last week and it broke on the second day.",
    "the staff were friendly and the food was great.",
    "a boring book with a weak plot and flat characters.",
    "user assistant system model hello how are you? i am fine, thank you.",
]


def family(name: str) -> Family:
    known = {**FAMILIES, **MORE_FAMILIES}
    if name not in known:
        raise UserError(f"unknown model family '{name}'; choose one of: {', '.join(known)}")
    return known[name]


def family_tokenizer(name: str, texts: list[str] | None = None, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (default: a small built-in corpus) with the family's special tokens,
    BOS behaviour, pad token (or none), padding side and chat template."""
    fam = family(name)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=fam.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((texts or CORPUS) * 4, trainer=trainer)
    if fam.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A $B", special_tokens=[(fam.bos, tok.token_to_id(fam.bos))])
    kw: dict[str, Any] = {"eos_token": fam.eos, **fam.extra}
    if fam.bos is not None:
        kw["bos_token"] = fam.bos
    if fam.pad is not None:
        kw["pad_token"] = fam.pad
    # the family's other special tokens (chat markers) must never be split or decoded as text
    others = [s for s in fam.specials if s not in kw.values()]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=fam.padding_side, model_max_length=1_000_000,
                                   additional_special_tokens=others, **kw)
    if fam.chat_template is not None:
        fast.chat_template = fam.chat_template
    return fast


def family_model(name: str, tokenizer: Any, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """The family's causal LM class with tiny sizes, randomly initialised under `seed`; its config carries the
    tokenizer's special-token ids (the pad id is left unset where the tokenizer has none, as in real checkpoints)."""
    fam = family(name)
    config = AutoConfig.for_model(fam.model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **{**fam.config, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_family(name: str, folder: str | Path, seed: int = 0, texts: list[str] | None = None) -> Path:
    """Write a tiny model of the family and its tokenizer to `folder`, like a downloaded checkpoint."""
    out = Path(folder)
    tok = family_tokenizer(name, texts)
    family_model(name, tok, seed).save_pretrained(out)
    tok.save_pretrained(out)
    return out
