"""`rlhf doctor`: run every rule over every stage of a run folder; print the findings or return them as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf.artifacts import ON_POLICY, Stage, load_run
from rlhf.diagnose.rules import INFO, RULES, SEVERE, SEVERITIES, WARNING


@dataclass
class Finding:
    rule: str
    severity: str  # info | warning | severe
    stage: str  # stage folder name, e.g. "ppo"
    title: str
    evidence: str
    why: str
    fix: str
    steps: tuple[int, int] | None = None  # first and last step/update the evidence covers

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps) if self.steps else None
        return d


@dataclass
class Diagnosis:
    path: Path
    stages: list[Stage]
    findings: list[Finding] = field(default_factory=list)

    @property
    def severe(self) -> bool:
        return any(f.severity == SEVERE for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {sev: sum(f.severity == sev for f in self.findings) for sev in SEVERITIES}

    def rules_hit(self, stage: str | None = None) -> set[str]:
        return {f.rule for f in self.findings if stage is None or f.stage == stage}

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path),
                "stages": [{"name": s.name, "kind": s.kind, "path": str(s.path), "rows": len(s.rows),
                            "last_step": s.last_step, "finished": s.summary is not None} for s in self.stages],
                "counts": self.counts(),
                "findings": [f.to_dict() for f in self.findings]}


def diagnose(path: str | Path) -> Diagnosis:
    """Load the run (or stage) folder at `path` and apply every rule to every stage it holds.
    Findings are ordered by stage (pipeline order), then severity. Raises UserError for a bad folder."""
    stages = load_run(path)
    findings = []
    for s in stages:
        stage_findings = [Finding("read-problem", INFO, s.name, "Part of the stage could not be read", note,
                                  "The doctor works with what it could read; conclusions may miss the unread part.",
                                  "Check the file named; a truncated last line after a crash is harmless.")
                          for note in s.notes]
        for r in RULES:
            if "*" not in r.kinds and s.kind not in r.kinds:
                continue
            hit = r.check(s)
            if hit is not None:
                fix = f"{hit.advice} {r.fix}".strip() if hit.advice else r.fix
                stage_findings.append(Finding(r.id, hit.severity, s.name, r.title, hit.evidence, r.why, fix,
                                              hit.steps))
        stage_findings.sort(key=lambda f: SEVERITIES.index(f.severity))
        findings += stage_findings
    return Diagnosis(Path(path), stages, findings)


STYLE = {SEVERE: "bold white on red", WARNING: "bold black on yellow", INFO: "bold white on blue"}


def render(d: Diagnosis, console: Any) -> None:
    """A readable terminal report (rich): the stages found, then each finding with evidence, why and fix."""
    from rich.markup import escape
    from rich.table import Table

    overview = Table(title=f"rlhf doctor: {escape(str(d.path))}", title_justify="left", show_edge=False)
    for col in ("stage", "kind", "rows", "last step", "finished", "findings"):
        overview.add_column(col)
    for s in d.stages:
        mine = [f for f in d.findings if f.stage == s.name]
        worst = next((sev for sev in SEVERITIES if any(f.severity == sev for f in mine)), None)
        label = f"[{STYLE[worst]}] {len(mine)} [/]" if worst else "[green]none[/]"
        overview.add_row(escape(s.name), s.kind, str(len(s.rows)), str(s.last_step if s.last_step is not None else "-"),
                         "yes" if s.summary is not None else "no", label)
    console.print(overview)
    console.print()
    kinds = {s.name: s.kind for s in d.stages}
    for f in d.findings:
        steps = ""
        if f.steps:
            unit = "update" if kinds.get(f.stage) in ON_POLICY else "step"
            steps = f" ({unit} {f.steps[0]})" if f.steps[0] == f.steps[1] else f" ({unit}s {f.steps[0]}-{f.steps[1]})"
        render_finding(f, console, steps)
    c = d.counts()
    if not d.findings:
        console.print("[green]No problems found.[/]")
    else:
        console.print(f"{c[SEVERE]} severe, {c[WARNING]} warning(s), {c[INFO]} info")


def render_finding(f: Finding, console: Any, steps: str = "") -> None:
    """One finding as a panel: evidence, why, fix (`rlhf doctor` and `rlhf monitor`)."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    for label, text in (("evidence", f.evidence), ("why", f.why), ("fix", f.fix)):
        body.add_row(label, escape(text))
    title = f"[{STYLE[f.severity]}] {f.severity.upper()} [/] {escape(f.stage)}: {escape(f.title)}{steps}"
    console.print(Panel(body, title=title, title_align="left", subtitle=f.rule, subtitle_align="right",
                        border_style="red" if f.severity == SEVERE else "yellow" if f.severity == WARNING
                        else "blue"))
