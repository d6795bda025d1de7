"""`rlhf report`: a self-contained HTML report of a run (docs/report.md)."""

from rlhf.report.build import build_report

__all__ = ["build_report"]
