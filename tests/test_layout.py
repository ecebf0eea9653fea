"""The code's shape (docs/architecture.md): stages meet only at files and through core/, every module has its
line on the architecture page, config checks only check, and the shipped training YAMLs state only what
differs from what lies under them."""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import re
from pathlib import Path

import yaml

from ophora.train.config import TrainConfig, read_config_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ophora"
PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())  # core/, synthetic/, the stages


def _imported_packages(text: str, package: tuple[str, ...]) -> set[str]:
    """The ophora packages (first name below `ophora.`) that a module of `package` (its folders below ophora/,
    e.g. ("sample",)) imports, at any depth: absolute and relative imports, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: resolved against the module's package
            base = package[:len(package) - (node.level - 1)]
            names = [*base, *node.module.split(".")] if node.module else [*base, *(a.name for a in node.names)]
            found.update(names[:1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ophora":
            parts = node.module.split(".")
            found.update(parts[1:2] if len(parts) > 1 else (a.name for a in node.names))
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ophora."))
    return found & set(PACKAGES)


def test_no_stage_imports_another_stage_and_core_imports_none():
    """core/ imports no stage; a stage imports only core/ and itself. synthetic/ (test and demo inputs) may drive
    the stages, as demo.py and the benchmarks do, but no stage imports it."""
    crossing = []
    for package in PACKAGES:
        allowed = {"core"} if package == "core" else set(PACKAGES) if package == "synthetic" else {package, "core"}
        for path in sorted((PACKAGE / package).rglob("*.py")):
            imported = _imported_packages(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).parts[:-1])
            crossing += [f"{path.relative_to(PACKAGE)} imports ophora.{other}" for other in sorted(imported - allowed)]
    assert not crossing, "what two stages share belongs in core/: " + "; ".join(crossing)


def test_the_import_check_sees_every_form_of_import():
    text = ("import ophora.train.export\nfrom ophora.curate import pipeline\nfrom ophora import prepare\n"
            "from ..evaluate import run\nfrom . import jobs\nimport numpy\ndef f():\n    from ophora.review.study import x\n")
    assert _imported_packages(text, ("sample",)) == {"train", "curate", "prepare", "evaluate", "sample", "review"}
    assert _imported_packages("from ophora.core.files import write_json\n", ("sample",)) == {"core"}


def _architecture_rows() -> dict[str, list[str]]:
    """package -> the file patterns (`name.py`, `refine*.py`) its row in the architecture page's table names."""
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(\w+)/` \|(.*)\|\s*$", line)
        if match:
            rows[match[1]] = re.findall(r"`([\w*]+\.py)`", match[2])
    return rows


def test_the_architecture_page_names_every_module():
    rows = _architecture_rows()
    missing = [f"{package}/ (no row)" for package in PACKAGES if package not in rows]
    for package in PACKAGES:
        for path in sorted((PACKAGE / package).glob("*.py")):
            if path.name != "__init__.py" and not any(fnmatch.fnmatch(path.name, p) for p in rows.get(package, [])):
                missing.append(f"{package}/{path.name}")
    assert not missing, "docs/architecture.md's package table lacks: " + ", ".join(missing)


def test_config_checks_only_check():
    """`check()` of a config raises and never edits (derived values are computed where they are used)."""
    edits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for cls in (n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)):
            for method in (m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "check"):
                for node in ast.walk(method):
                    targets = node.targets if isinstance(node, ast.Assign) else \
                        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                    edits += [f"{path.relative_to(PACKAGE)}: {cls.name}.check sets {ast.unparse(t)}"
                              for t in targets if ast.unparse(t).startswith("self.")]
                    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "object.__setattr__"):
                        edits.append(f"{path.relative_to(PACKAGE)}: {cls.name}.check calls {ast.unparse(node.func)}")
    assert not edits, "; ".join(edits)


def test_shipped_training_configs_state_only_what_differs():
    defaults = dataclasses.asdict(TrainConfig())
    restated = []
    for path in sorted((PACKAGE / "configs").glob("*.yaml")):
        own = yaml.safe_load(path.read_text(encoding="utf-8"))
        base = own.pop("base", None)
        under = {**defaults, **(read_config_file(base) if base else {})}
        restated += [f"{path.name}: {key}" for key, value in own.items() if key in under and under[key] == value]
    assert not restated, "keys equal to the default or the base config: " + ", ".join(restated)
