"""benchmarks/gpu_check.sh without a GPU: --dry-run lists its checks as JSON lines, a real run refuses in one line;
and the accelerate configs it and docs/distributed.md name load with accelerate's own config loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CHECKS = ["vllm_sampler_test", "vllm_ppo_test", "ppo_bf16", "ppo_fp16", "ppo_bf16_vllm", "ddp_2gpu", "fsdp2_2gpu"]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml")) + [ROOT / "configs/recipes/accelerate/zero3.yaml"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env})


def test_dry_run_lists_every_check_as_a_json_line():
    r = _run("--dry-run", CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["check"] for row in rows] == CHECKS
    for row in rows:
        assert row["dry_run"] is True and row["what"] and row["command"]
    by = {row["check"]: row["command"] for row in rows}
    # the vLLM checks run the two tests that skip on CPU; they must exist under those names
    for check in ("vllm_sampler_test", "vllm_ppo_test"):
        path, name = by[check].split()[-1].split("::")
        assert f"def {name}(" in (ROOT / path).read_text()
    assert "--dtype bf16" in by["ppo_bf16"] and "--dtype fp16" in by["ppo_fp16"]
    assert "--generation_backend vllm" in by["ppo_bf16_vllm"]
    assert "configs/accelerate/fsdp2.yaml" in by["fsdp2_2gpu"] and "--multi_gpu" in by["ddp_2gpu"]


def test_without_a_gpu_it_exits_with_one_clear_line():
    r = _run(CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--dry-run" in lines[0]
    assert "Traceback" not in r.stderr


def test_unknown_argument_is_refused():
    r = _run("--bogus")
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_accelerate_configs_load_with_accelerates_own_loader(path):
    """Unknown top-level keys fail accelerate's loader; fsdp_config/deepspeed_config keys must be `accelerate
    launch` options; an FSDP file must build accelerate's FSDP plugin from the environment the launcher makes."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    parser = launch_command_parser()
    options = {a.dest for a in parser._actions}
    for key in {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}:
        assert key in options, f"{path.name}: '{key}' is no accelerate launch option"
    if cfg.distributed_type.name == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2
        args, *_ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "x.py"]))
        with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    else:
        assert cfg.distributed_type.name == "DEEPSPEED" and cfg.deepspeed_config["zero_stage"] == 3
    assert cfg.num_processes == (2 if path.name == "fsdp2-cpu.yaml" else 8)
    assert cfg.use_cpu == (path.name == "fsdp2-cpu.yaml")


def test_the_two_zero3_files_agree():
    """configs/accelerate/zero3.yaml and recipe (c)'s configs/recipes/accelerate/zero3.yaml hold the same settings."""
    from accelerate.commands.config.config_args import load_config_from_file

    a, b = (load_config_from_file(str(ROOT / p)).to_dict() for p in
            ("configs/accelerate/zero3.yaml", "configs/recipes/accelerate/zero3.yaml"))
    assert a == b


@pytest.mark.timeout(300)
def test_fsdp2_cpu_config_runs_as_ddp_over_gloo_under_this_accelerate(tmp_path):
    """What configs/accelerate/fsdp2-cpu.yaml gives today: 2 gloo processes, but accelerate (1.15) switches to FSDP
    only from GPU-like device types, so on CPU its FSDP settings are ignored and the run is DDP (MULTI_CPU).
    docs/distributed.md says so; if this fails, accelerate has changed and that page must be updated."""
    script = tmp_path / "probe.py"
    script.write_text("from accelerate import Accelerator\n"
                      "a = Accelerator(cpu=True)\n"
                      "print('PROBE', a.process_index, a.num_processes, a.distributed_type.name, a.state.backend)\n")
    launch = Path(sys.executable).parent / "accelerate"
    r = subprocess.run([str(launch), "launch", "--config_file", str(ROOT / "configs/accelerate/fsdp2-cpu.yaml"),
                        str(script)], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = sorted(x.split()[1:] for x in r.stdout.splitlines() if x.startswith("PROBE"))
    assert rows == [["0", "2", "MULTI_CPU", "gloo"], ["1", "2", "MULTI_CPU", "gloo"]]
