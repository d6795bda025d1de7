"""Test-only drivers shared by the stage tests: a crash right after a checkpoint is written (for resume tests), and
one script run as 1 process and as 2 gloo processes (for "two processes equal one" tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlhf.train import checkpoint


class CrashAfterCheckpoint(Exception):
    """Raised by `crash_after_checkpoints` right after the n-th checkpoint is on disk."""


@contextmanager
def crash_after_checkpoints(monkeypatch: pytest.MonkeyPatch, n: int):
    """Run the body with `save_checkpoint_dir` raising right after its n-th complete save, as a kill would; the
    body must end in that crash. The real function is back afterwards, so the test can resume."""
    real_save, calls = checkpoint.save_checkpoint_dir, {"n": 0}

    def save_then_crash(build, final_dir):
        real_save(build, final_dir)
        calls["n"] += 1
        if calls["n"] == n:
            raise CrashAfterCheckpoint

    monkeypatch.setattr(checkpoint, "save_checkpoint_dir", save_then_crash)
    try:
        with pytest.raises(CrashAfterCheckpoint):
            yield
    finally:
        monkeypatch.setattr(checkpoint, "save_checkpoint_dir", real_save)


def run_one_and_two_processes(script: Path, args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run `script ARGS OUT` as one process into tmp_path/one and under torchrun with 2 CPU (gloo) processes into
    tmp_path/two; both must succeed. Returns the two output folders."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one")], env=env, capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), *args, str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp_path / "one", tmp_path / "two"


BENCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_NO_PROGRESS": "1"}


def tiny_demo(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A finished `rlhf demo --preset tiny` run in a fresh temporary folder (for module-scoped fixtures)."""
    from rlhf.cli import main

    out = tmp_path_factory.mktemp(name) / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    return out


def run_benchmark(script: Path, *args: object, timeout: int = 900) -> subprocess.CompletedProcess:
    """A benchmark script in a child process from the repository root, one torch thread, no progress bars."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=root,
                          env=BENCH_ENV, timeout=timeout)
