"""rlhf: supervised fine-tuning, preference collection, reward modelling and PPO for causal language models."""

__version__ = "0.1.0"
