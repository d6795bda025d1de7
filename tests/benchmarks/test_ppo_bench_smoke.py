"""The PPO benchmark and the compute floor run end to end (--smoke: one short update) and end with one JSON line;
the shared workload builder gives what the benchmark promises (vocab, special ids, 16-id prompts that round-trip)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a 1-thread run is not slowed by other work on a busy machine
PPO_KEYS = {"s_per_update", "s_per_update_min", "s_per_update_max", "gen_tokens_per_s", "tokens_per_s", "peak_rss_mb",
            "floor_s", "floor_ratio", "threads", "torch_version", "shape"}


def _run(*args: str) -> dict:
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    """One smoke workload (response 8, as --smoke uses) shared by both scripts: it is built once."""
    out = tmp_path_factory.mktemp("bench") / "workload"
    info = _run(BENCH / "_workload.py", out, "--smoke", "--response_length", "8")
    assert info["vocab"] == 4096 and info["policy_params"] == 1_705_088 and info["scalar_params"] == 1_180_928
    return out


def test_ppo_step_smoke_prints_json_last(workload):
    last = _run(BENCH / "ppo_step.py", "--smoke", "--threads", "1", "--workload", workload)
    assert set(last) >= PPO_KEYS
    assert last["smoke"] is True and last["updates"] == 1 and last["shape"] == "tiny" and last["threads"] == 1
    assert last["response_length"] == 8 and last["batch"] == 16
    assert 0 < last["s_per_update_min"] <= last["s_per_update"] <= last["s_per_update_max"]
    assert last["floor_s"] > 0 and last["floor_ratio"] == pytest.approx(last["s_per_update"] / last["floor_s"])
    # tokens/s are the token counts of one update over its median time
    assert last["tokens_per_s"] == pytest.approx(16 * (16 + 8) / last["s_per_update"])
    assert last["gen_tokens_per_s"] == pytest.approx(16 * 8 / last["generate_s"])
    assert last["peak_rss_mb"] > 0


def test_compute_floor_smoke_prints_json_last(workload):
    last = _run(BENCH / "compute_floor.py", "--smoke", "--threads", "1", "--workload", workload)
    assert {"floor_s", "floor_s_min", "floor_s_max", "floor_generate_s", "floor_score_s", "floor_train_s",
            "threads", "torch_version", "shape"} <= set(last)
    assert last["floor_updates"] == 1 and last["threads"] == 1
    parts = last["floor_generate_s"] + last["floor_score_s"] + last["floor_train_s"]
    assert last["floor_s"] == pytest.approx(parts)


def test_workload_tokenizer_and_prompts():
    sys.path.insert(0, str(BENCH))
    try:
        import _workload as w
    finally:
        sys.path.remove(str(BENCH))
    from rlhf.data.demo import corpus_sentences

    sentences = corpus_sentences(2000, seed=0)
    tok = w.build_tokenizer(sentences)
    assert tok.get_vocab_size() == 4096
    assert (tok.token_to_id("<pad>"), tok.token_to_id("<eos>")) == (0, 1)
    assert tok.token_to_id("<bos>") is None and tok.token_to_id("<unk>") is None
    prompts = w.make_prompts(tok, sentences)
    assert len(prompts) == 64 and len({tuple(p) for p in prompts}) == 64
    fast = w.hf_tokenizer(tok)
    for ids in prompts:
        assert len(ids) == 16 and 0 not in ids and 1 not in ids  # no special ids, so no padding
        assert fast(fast.decode(ids))["input_ids"] == ids  # what the stage reads from the prompts JSONL
