"""Bad paths and files get one line (exit 2) naming the path and the fix, before any work: every subcommand's output
that is a file where a folder is expected (or the reverse) or cannot be written; inputs that are folders, not UTF-8
or damaged Parquet; a model without a reward head as --reward; a planted pickle in checkpoint/ (refused unloaded).
All in-process through `rlhf.cli.main`, so a stray traceback fails the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import torch

import rlhf.data.preferences  # noqa: F401 - imported before any euid switch (see read_only_dir)
import rlhf.labeling.cli  # noqa: F401
import rlhf.report.build  # noqa: F401
import rlhf.report.cli  # noqa: F401
from rlhf.cli import main
from rlhf.stages import demo, evaluate, ppo, reward, sample, sft  # noqa: F401
from tests.models.families_helpers import rm_folder, write_data
from tests.support.families import save_family

NOBODY = 65534


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "a_file").write_text("not a folder\n")
    (d / "a_dir").mkdir()
    (d / "bad_utf8.jsonl").write_bytes(b"\n{\"prompt\": \"caf\xe9 \xff\"}\n")  # latin-1 on line 2
    (d / "bad.parquet").write_bytes(b"PAR1\x15\x04\x15\x00\xff\xfe not really parquet PAR1")
    return d


@contextlib.contextmanager
def read_only_dir():
    """A folder this process cannot write in. As root the mode bits do not stop writes, so the call runs with the
    effective uid of `nobody` (the folder and its parent are world-readable so nobody can reach it)."""
    parent = Path(tempfile.mkdtemp(prefix="rlhf-ro-"))
    try:
        parent.chmod(0o755)
        ro = parent / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        root = os.geteuid() == 0
        if root:
            os.seteuid(NOBODY)
        try:
            yield ro
        finally:
            if root:
                os.seteuid(0)
    finally:
        (parent / "ro").chmod(0o755)
        shutil.rmtree(parent, ignore_errors=True)


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1, (argv, err)  # one line, no traceback
    for needle in needles:
        assert needle in err, (argv, needle, err)
    return err


# Each subcommand with the output argument last; the inputs need not exist: outputs are checked first.
DIR_OUTPUTS = {
    "sft": ["sft", "--data", "in.jsonl", "--out"],
    "reward": ["reward", "--data", "prefs.jsonl", "--out"],
    "ppo": ["ppo", "--policy", "p", "--reward", "r", "--prompts", "x.jsonl", "--out"],
    "eval": ["eval", "--policy", "p", "--baseline", "b", "--reward", "r", "--prompts", "x.jsonl", "--out"],
    "demo": ["demo", "--preset", "tiny", "--out"],
}
FILE_OUTPUTS = {
    "sample": ["sample", "--model", "m", "--prompts", "x.jsonl", "--out"],
    "report": ["report", "RUN", "--out"],
    "label export --out": ["label", "export", "--db", "labels.db", "--out"],
    # --out in a folder anyone may write to (the read-only case runs as nobody); the check of --raw fails first
    "label export --raw": ["label", "export", "--db", "labels.db", "--out", str(Path(tempfile.gettempdir()) / "p.jsonl"),
                           "--raw"],
}


@pytest.mark.parametrize("name", DIR_OUTPUTS)
def test_folder_outputs_that_are_files_or_read_only(name, files, capsys):
    argv = DIR_OUTPUTS[name]
    one_line_error(capsys, argv + [str(files / "a_file")], str(files / "a_file"), "is a file, not a folder")
    one_line_error(capsys, argv + [str(files / "a_file" / "sub")], str(files / "a_file"), "is a file")
    with read_only_dir() as ro:
        one_line_error(capsys, argv + [str(ro)], str(ro), "read-only")
        one_line_error(capsys, argv + [str(ro / "new" / "out")], str(ro / "new" / "out"), "read-only")
    assert not (files / "a_file" / "sub").exists()


@pytest.mark.parametrize("name", FILE_OUTPUTS)
def test_file_outputs_that_are_folders_or_read_only(name, files, capsys):
    argv = FILE_OUTPUTS[name]
    one_line_error(capsys, argv + [str(files / "a_dir")], str(files / "a_dir"), "is a folder, not a file")
    one_line_error(capsys, argv + [str(files / "a_file" / "x.jsonl")], str(files / "a_file"), "is a file")
    with read_only_dir() as ro:
        one_line_error(capsys, argv + [str(ro / "x.jsonl")], str(ro / "x.jsonl"), "read-only")


def test_serve_refuses_a_port_out_of_range(capsys, monkeypatch, tmp_path):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server was started"))
    one_line_error(capsys, ["label", "serve", "--db", str(tmp_path / "l.db"), "--port", "99999"], "--port", "99999")


# --- inputs ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    data = write_data(d / "data")
    base = save_family("llama", d / "base")
    return {**data, "base": base, "rm": rm_folder(base, d / "rm")}


def test_inputs_that_are_folders_not_utf8_or_damaged_parquet(files, models, capsys, tmp_path):
    bad = {"a folder": (files / "a_dir", "folder"), "not UTF-8": (files / "bad_utf8.jsonl", "bad_utf8.jsonl:2: not UTF-8"),
           "parquet": (files / "bad.parquet", "bad.parquet")}  # (path, what the one line says)
    base, rm = str(models["base"]), str(models["rm"])
    for what, (path, says) in bad.items():
        out = tmp_path / what.replace(" ", "_")
        commands = [
            ["sft", "--model", base, "--data", str(path), "--out", str(out / "sft"), "--device", "cpu"],
            ["sample", "--model", base, "--prompts", str(path), "--out", str(out / "s" / "samples.jsonl")],
            ["reward", "--model", base, "--data", str(path), "--out", str(out / "rm"), "--device", "cpu"],
            ["eval", "--policy", base, "--baseline", base, "--reward", rm, "--prompts", str(path),
             "--out", str(out / "eval"), "--device", "cpu"],
            ["ppo", "--policy", base, "--reward", rm, "--prompts", str(path), "--out", str(out / "ppo"),
             "--device", "cpu"],
            ["label", "add-tasks", "--db", str(out / "l.db"), str(path)],
            ["label", "import", "--db", str(out / "l.db"), str(path)],
        ]
        for argv in commands:
            one_line_error(capsys, argv, str(path) if what == "a folder" else says)
        # a failed stage leaves no folder behind that holds only config.yaml (or a tokenizer)
        assert not any((out / name).exists() for name in ("sft", "rm", "eval", "ppo"))
        assert not (out / "s").exists()
    one_line_error(capsys, ["label", "import", "--db", str(tmp_path / "l.db"), str(files / "bad.parquet")],
                   "not a readable Parquet file")
    one_line_error(capsys, ["sft", "--data", str(files / "bad.parquet"), "--out", str(tmp_path / "p")],
                   "this is a Parquet file, not JSONL")


def test_ppo_refuses_a_causal_lm_as_the_reward_model(models, capsys, tmp_path):
    out = tmp_path / "ppo"
    one_line_error(capsys, ["ppo", "--policy", str(models["base"]), "--reward", str(models["base"]), "--prompts",
                            str(models["prompts"]), "--out", str(out), "--device", "cpu", "--rollout_batch_size", "4"],
                   str(models["base"]), "not a reward model", "rlhf reward --model")
    assert not out.exists()  # nothing but config.yaml would have been in it


# --- pickles in checkpoint/ --------------------------------------------------------------------------------------


class Planted:
    """Unpickling this creates `marker`: what a planted trainer_state.pt could do as the user who resumes."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(checkpoint: Path, marker: Path, model_files: list[str]) -> None:
    checkpoint.mkdir(parents=True)
    torch.save({"optimizer": Planted(marker), "step": 1}, checkpoint / "trainer_state.pt")
    for name in model_files:
        torch.save({}, checkpoint / name)


def test_resume_refuses_a_planted_pickle_without_running_it(models, capsys, tmp_path):
    base = str(models["base"])
    runs = {
        "sft": (["sft", "--model", base, "--data", str(models["pairs"]), "--max_steps", "2", "--batch_size", "4",
                 "--device", "cpu"], ["model.pt"]),
        "ppo": (["ppo", "--policy", base, "--reward", str(models["rm"]), "--prompts", str(models["prompts"]),
                 "--updates", "1", "--rollout_batch_size", "4", "--num_minibatches", "2", "--max_new_tokens", "4",
                 "--tensorboard", "false", "--device", "cpu"], ["policy.pt", "value.pt"]),
    }
    for name, (argv, model_files) in runs.items():
        out, marker = tmp_path / name, tmp_path / f"{name}.pwned"
        _plant(out / "checkpoint", marker, model_files)
        one_line_error(capsys, argv + ["--out", str(out), "--resume", "true"], "trainer_state.pt", "refused to load")
        assert not marker.exists(), name  # the pickle was never run


def test_a_failed_stage_removes_only_a_folder_it_created_without_results(tmp_path):
    from rlhf.errors import UserError
    from rlhf.stages.common import stage_outputs

    class Cfg:
        def __init__(self, out):
            self.out = str(out)

    def failing(write):
        @stage_outputs(out="dir")
        def run(cfg):
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text("x: 1\n")
            (out / "metrics.jsonl").touch()  # opened, nothing logged yet
            for name in write:
                (out / name).write_text("{}\n")
            raise UserError("failed")

        return run

    for out, write, kept in [(tmp_path / "new" / "run", [], False),  # created here, only setup files: removed
                             (tmp_path / "logged", ["summary.json"], True)]:  # results: kept for doctor / --resume
        with pytest.raises(UserError):
            failing(write)(Cfg(out))
        assert out.exists() == kept
    assert not (tmp_path / "new").exists()  # the highest folder it created goes too
    (tmp_path / "mine").mkdir()
    with pytest.raises(UserError):
        failing([])(Cfg(tmp_path / "mine"))
    assert (tmp_path / "mine" / "config.yaml").exists()  # a folder that existed before is never removed
