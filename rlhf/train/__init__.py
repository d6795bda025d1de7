"""Training infrastructure below the stages: accelerator, optimiser and lr schedule, seeds and RNG state,
checkpoint save/recover/resume, training statistics, early stopping, and the one step loop (`loop.train_loop`) that
SFT, the reward model and DPO run on. Imports rlhf.core, rlhf.data and rlhf.models only (never rlhf.stages, rlhf.rl
or rlhf.cli)."""
