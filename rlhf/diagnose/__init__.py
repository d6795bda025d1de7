"""`rlhf doctor`: rules over a run's metrics.jsonl, config.yaml, summary.json and eval.json (docs/doctor.md)."""

from rlhf.artifacts import Stage, load_run
from rlhf.diagnose.doctor import Diagnosis, Finding, diagnose, render
from rlhf.diagnose.rules import RULES

__all__ = ["RULES", "Diagnosis", "Finding", "Stage", "diagnose", "load_run", "render"]
