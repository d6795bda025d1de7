"""Per-token log-probabilities and entropies from model logits."""

from __future__ import annotations

import torch

from rlhf.core._checks import check_number, check_tensor

_HALF = (torch.float16, torch.bfloat16)


def _scaled_logits(fn: str, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, upcast to float32 if half precision, with at most one extra (B, T, V) tensor."""
    check_tensor(fn, "logits", logits)
    if logits.dim() < 1 or not logits.is_floating_point():
        shape = tuple(logits.shape)
        raise ValueError(f"{fn}: `logits` must be a floating tensor (B, T, V), got {logits.dtype} of shape {shape}")
    temperature = check_number(fn, "temperature", temperature, low=0.0, low_open=True)
    # Why float32: log-softmax in bf16 is off by ~1e-2 nats, which is noise of the size of the PPO ratio signal.
    z = logits.float() if logits.dtype in _HALF else logits
    if temperature != 1.0:
        # The sampler divided by the same temperature; without it here logp and the PPO ratio would be off.
        # In place only on our own float32 copy, never on the caller's tensor.
        z = z.div_(temperature) if z is not logits else z / temperature
    return z


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) gathered at `tokens`.

    logits: (B, T, V); tokens: (B, T) integer ids in [0, V). Returns (B, T), float32 for half-precision logits.
    Computed as gathered logit - logsumexp, so no (B, T, V) log-softmax tensor is kept besides the scaled logits.
    """
    fn = "logprobs_from_logits"
    z = _scaled_logits(fn, logits, temperature)
    check_tensor(fn, "tokens", tokens)
    if tokens.dtype.is_floating_point or tokens.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"{fn}: `tokens` must be an integer tensor of token ids, got {tokens.dtype}")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: `tokens` shape {tuple(tokens.shape)} must equal `logits` shape without the vocab dim "
            f"{tuple(logits.shape[:-1])}; did you forget to shift logits and tokens by one position?"
        )
    vocab = logits.shape[-1]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"{fn}: token ids must be in [0, {vocab}) (the logits' vocab size), got range "
            f"[{int(tokens.min())}, {int(tokens.max())}]; check the tokenizer matches the model"
        )
    picked = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position.

    logits: (B, T, V), finite. Returns (B, T), float32 for half-precision logits.
    H = logsumexp(z) - sum_v softmax(z)_v * z_v, which is -sum p log p without taking log of tiny p.
    """
    z = _scaled_logits("entropy_from_logits", logits, temperature)
    probs = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1)
