"""The layers of `rlhf` import only downward. Every `import` of every module under rlhf/ is read with `ast`
(function-level imports included: a lazy import is still a dependency), so a back-edge fails here however it hides.

The layers, lowest first (a package may import its own modules and any package of a LOWER rank; two packages of
the same rank may not import each other):

| rank | package           | what it is | may import (besides the standard library and third-party packages) |
|------|-------------------|------------|------------------------------------------------------------------------|
| 0    | rlhf, rlhf.errors | the version, `UserError`/`ConfigError` | nothing of rlhf |
| 1    | rlhf.io           | atomic writes, text files | errors |
| 2    | rlhf.config       | typed options, YAML + CLI overrides | errors, io |
| 3    | rlhf.core         | the RLHF math, torch only | nothing of rlhf (stricter than its rank: see CORE_ONLY) |
| 4    | rlhf.data         | demo corpus, prompt sets, preference formats | ranks 0-3 |
| 4    | rlhf.models       | loading, precision, generation, rollout backends | ranks 0-3 |
| 4    | rlhf.artifacts    | what a run folder holds and how every reader reads it (torch-free) | ranks 0-3 |
| 5    | rlhf.labeling     | preference store, web app, simulated labelers, export (torch-free) | ranks 0-4 |
| 6    | rlhf.train        | accelerator, optimisers, checkpoint/resume, the step loop | ranks 0-5 |
| 7    | rlhf.rl           | the on-policy seam: Rollout, collect, score, estimators, optimiser | ranks 0-6 |
| 8    | rlhf.diagnose     | `rlhf doctor` rules over run artifacts, `--env`, monitor | ranks 0-7 |
| 9    | rlhf.report       | plots and the HTML report (shows the doctor's findings) | ranks 0-8 |
| 10   | rlhf.stages       | one file per stage or algorithm, and the stage registry | ranks 0-9 |
| 11   | rlhf.plan         | recipes and the dry run (builds stage configs through the registry) | ranks 0-10 |
| 12   | rlhf.cli          | the one entry point | everything |

Why this order: artifacts sits with data/models because eval (a stage), doctor and report all read runs through it
and it needs nothing but JSON/YAML; labeling sits above data (its simulated labelers call the gold judge) and stays
torch-free (the web app must start without torch); diagnose and report sit above the training layers (`doctor --env`
inspects models and devices) and below stages, because the demo runs the doctor and writes the report; plan is at
the CLI level because it builds every stage's config.

Inside rlhf.stages, a stage imports no other stage's module: shared helpers live in `rlhf.stages.common` (a
re-export shim while training infrastructure moves to rlhf.train) or lower, and the registry is
`rlhf.stages.registry`. The one exception is `rlhf.stages.demo`, the pipeline driver, which runs other stages'
`run()` (it is the same code as the `rlhf` commands, called in order).

PENDING lists known back-edges awaiting a move (none today); the test fails for any back-edge not listed, and also
for a listed one that is gone (delete its line then, so the list stays exact).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rlhf

ROOT = Path(rlhf.__file__).parent

RANK = {"rlhf": 0, "errors": 0, "io": 1, "config": 2, "core": 3, "data": 4, "models": 4, "artifacts": 4,
        "labeling": 5, "train": 6, "rl": 7, "diagnose": 8, "report": 9, "stages": 10, "plan": 11, "cli": 12}
CORE_ONLY = {"core"}  # packages that import nothing of rlhf outside themselves
STAGE_SHARED = {"rlhf.stages", "rlhf.stages.common", "rlhf.stages.registry"}  # what any stage may import
PIPELINE_DRIVERS = {"rlhf.stages.demo"}  # may import the stage modules whose run() it calls

# (importer, imported) back-edges in files owned by the helpers refactoring them (issue 16); delete as they go
PENDING: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[tuple[str, int]]:
    """(imported rlhf module, line) for every import statement in the file, at any depth (functions included)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "rlhf"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..core import y
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "rlhf":
                # `from rlhf.stages import ppo` imports the module rlhf.stages.ppo, not only the package
                subs = {f"{target}.{a.name}" for a in node.names if is_module(root, f"{target}.{a.name}")}
                found |= {(t, node.lineno) for t in (subs or {target})}
    return found


def is_module(root: Path, dotted: str) -> bool:
    path = root.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rlhf"


def back_edges(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """(importer, imported) -> 'file:line: why' for every import that breaks the layer rules."""
    bad = {}
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        for target, line in imports(path, root):
            a, b = layer(src), layer(target)
            where = f"{path.relative_to(root.parent)}:{line}"
            if a not in RANK or b not in RANK:
                bad[(src, target)] = f"{where}: layer '{a if a not in RANK else b}' is not in RANK; place it in the table"
            elif a != b and (a in CORE_ONLY or RANK[b] >= RANK[a]):
                bad[(src, target)] = f"{where}: {src} ({a}, rank {RANK[a]}) imports {target} ({b}, rank {RANK[b]})"
            elif a == b == "stages" and target not in STAGE_SHARED and src != target and src not in PIPELINE_DRIVERS:
                bad[(src, target)] = f"{where}: stage {src} imports another stage's module {target}; move the helper " \
                                     "to rlhf.stages.common or a lower layer"
    return bad


def test_no_lower_layer_imports_a_higher_one():
    bad = back_edges()
    new = {edge: why for edge, why in bad.items() if edge not in PENDING}
    assert not new, "back-edges:\n" + "\n".join(sorted(new.values()))


def test_pending_back_edges_still_exist():
    gone = PENDING - set(back_edges())
    assert not gone, f"these back-edges are fixed: delete them from PENDING: {sorted(gone)}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "rlhf"
    (pkg / "models").mkdir(parents=True)
    (pkg / "stages").mkdir()
    for f in ("__init__.py", "models/__init__.py", "stages/__init__.py", "stages/common.py"):
        (pkg / f).write_text("")
    (pkg / "models" / "x.py").write_text("def f():\n    from ..stages.common import g\n    return g\n")
    (pkg / "stages" / "a.py").write_text("def h():\n    import rlhf.stages.b\n")
    (pkg / "stages" / "b.py").write_text("")
    assert set(back_edges(pkg)) == {("rlhf.models.x", "rlhf.stages.common"), ("rlhf.stages.a", "rlhf.stages.b")}


def test_torch_free_layers_do_not_import_torch():
    """The label store's web app and export, and the run readers, start without torch (a labeling server needs no
    ML stack; `rlhf doctor` on a run folder should be instant)."""
    code = ("import sys\n"
            "import rlhf.labeling.export, rlhf.labeling.store, rlhf.artifacts, rlhf.diagnose.doctor, rlhf.report.build\n"
            "assert rlhf.labeling.export.default_ranking_pairs([2, 1, 2]) == [(1, 0), (1, 2)]\n"
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_labeling_ranking_pairs_match_core():
    """labeling's torch-free pair enumeration gives exactly rlhf.core.ranking_to_pairs' pairs."""
    import itertools

    from rlhf.core import ranking_to_pairs
    from rlhf.labeling.export import default_ranking_pairs

    for k in (2, 3, 4):
        for ranks in itertools.product(range(1, k + 1), repeat=k):
            assert default_ranking_pairs(list(ranks)) == ranking_to_pairs(list(ranks))


def test_one_stage_registry():
    """rlhf.cli and rlhf.plan read the one registry; no other module names a stage module by string (a second
    registry would drift: a stage added to one list and not the other)."""
    import rlhf.cli
    import rlhf.plan
    from rlhf.stages import registry

    assert rlhf.cli.STAGES is registry.STAGES
    assert set(rlhf.plan.STAGES) <= set(registry.STAGES)
    for name in rlhf.plan.STAGES:
        assert rlhf.plan._config_class(name) is registry.config_class(name)
    named = {}
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("rlhf.stages."):
                named.setdefault(str(path.relative_to(ROOT.parent)), set()).add(node.value)
    assert set(named) == {"rlhf/stages/registry.py"}, named
