"""Import direction: every project module imports only what its row of the module table
in docs/architecture.md allows, and a few rules hold whatever the table says.

The table is the doc's markdown table with the columns ``module | owns | may import``
(there may be several, e.g. one per package). Its cells, as written there:

- module: the module in backticks, ``pipelines.store`` (or its file,
  ``pipelines/store.py``); a package is ``pipelines.__init__`` (or its ``__init__.py``).
- may import: project modules in backticks. A bare name is a ``pipelines`` module
  (``store`` = ``pipelines.store``); ``towers.*`` is any module of ``towers``; a name
  inside a module (``ranking.metrics.top_k``, ``pipelines.__version__``) allows that
  module; "nothing" allows no project module. Notes outside backticks are not read.

Each ``.py`` file of the installed packages (pyproject.toml's ``[tool.setuptools]``) is
read with ``ast``; every import counts, at any depth (inside functions too). Only project
modules are checked: ``pipelines.*``, ``towers.*``, ``ranking.*``, ``serving.*``,
``data_query``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
HEADER = ["module", "owns", "may import"]

TENSORFLOW = ("tensorflow", "tensorflow_recommenders", "tf_keras", "keras", "scann")
# The modules that run a stage, which the towers (a layer below them) never import.
STAGES = ("pipelines.features", "pipelines.baselines", "pipelines.train_retrieval",
          "pipelines.train_ranking", "pipelines.train_scores", "pipelines.evaluate",
          "pipelines.publish", "pipelines.__main__")
# Only the CLI, the retraining it runs from the daily loop and the walk-forward test's
# refit import the training stages: nothing else runs them.
TRAINING_STAGES = ("pipelines.train_retrieval", "pipelines.train_ranking",
                   "pipelines.train_scores")
CLI = "pipelines.__main__"
RUNNERS = (CLI, "pipelines.retrain", "pipelines.walk_forward")


# -- the project's modules -----------------------------------------------------------

def _module_name(relpath: str) -> str:
    parts = relpath[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def project_files() -> dict[str, str]:
    """``{module name: path relative to the root}`` of every installed .py file."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = [f"{m}.py" for m in setuptools.get("py-modules", [])]
    for package in setuptools["packages"]:
        files += sorted(p.relative_to(ROOT).as_posix()
                        for p in (ROOT / package.replace(".", "/")).rglob("*.py")
                        if "__pycache__" not in p.parts)
    return {_module_name(f): f for f in files}


def _is_package(module: str) -> bool:
    return project_files()[module].endswith("/__init__.py")


ROOTS = frozenset(m.split(".")[0] for m in project_files())


def _owner(name: str) -> str | None:
    """The project module that ``name`` (a module, or a name inside one) is: the
    longest known prefix; None outside the project."""
    parts = name.split(".")
    if parts[0] not in ROOTS:
        return None
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in project_files():
            return ".".join(parts[:end])
    return None


# -- what a module imports -----------------------------------------------------------

def imports(module: str) -> list[tuple[int, str]]:
    """``(line, project module)`` of every import in ``module``'s file, at any depth."""
    path = ROOT / project_files()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            # `from a import b`: the module a.b if there is one, else a name inside a.
            names = [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            owner = _owner(name)
            if owner is not None and owner != module:
                found.append((node.lineno, owner))
    return sorted(set(found))


# -- the module table ----------------------------------------------------------------

@dataclasses.dataclass
class Row:
    modules: set[str]                # allowed project modules
    packages: set[str]               # allowed packages, every module under them (`x.*`)
    problems: list[str]              # what in the row could not be read

    def allows(self, target: str) -> bool:
        return target in self.modules or any(
            target == p or target.startswith(p + ".") for p in self.packages)


def _cells(line: str) -> list[str] | None:
    """The cells of a markdown table line (``|`` inside backticks or escaped is text)."""
    if not line.strip().startswith("|"):
        return None
    cells, current, code, previous = [], "", False, ""
    for char in line.strip():
        if char == "`":
            code = not code
        if char == "|" and not code and previous != "\\":
            cells.append(current.strip())
            current = ""
        else:
            current += char
        previous = char
    cells.append(current.strip())
    return cells[1:-1] if cells[-1] == "" else cells[1:]


def _resolve(token: str, row_module: str | None) -> str | None:
    """A backticked project module name -> the module (see the docstring's rules)."""
    token = _dotted(token)
    candidates = [token]
    if token.split(".")[0] not in ROOTS:  # a bare name: pipelines', or the row's package
        candidates = [f"pipelines.{token}"]
        if row_module and "." in row_module:
            candidates.append(f"{row_module.rpartition('.')[0]}.{token}")
    for name in candidates:
        owner = _owner(name)
        # a module, or a name directly inside one (not a missing submodule's prefix)
        if owner is not None and (owner == name or owner == name.rpartition(".")[0]):
            return owner
    return None


def _dotted(name: str) -> str:
    """A module as the doc may write it (``pipelines/store.py``, ``pipelines.store``,
    ``pipelines/__init__.py``, ``pipelines.__init__``) -> its dotted name."""
    name = name.strip()
    if name.endswith(".py"):
        name = name[:-len(".py")].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _row_module(cell: str) -> str:
    """The module a row is about: its first cell's (first) backticked file or name."""
    written = re.findall(r"`([^`]+)`", cell)
    return _dotted(written[0] if written else cell)


def _read_row(cells: list[str]) -> tuple[str, Row]:
    module = _row_module(cells[0])
    row = Row(set(), set(), [])
    allowed = cells[2] if len(cells) > 2 else ""
    tokens = re.findall(r"`([^`]+)`", allowed)
    if not tokens and not allowed.strip().lower().startswith("nothing"):
        row.problems.append(f"its 'may import' cell ({allowed!r}) names no module in "
                            "backticks; name them, or write 'nothing'")
    for token in tokens:
        if token.endswith(".*"):
            package = _resolve(token[:-2], module)
            if package is None or not _is_package(package):
                row.problems.append(f"`{token}`: {token[:-2]} is not a project package")
            else:
                row.packages.add(package)
            continue
        target = _resolve(token, module)
        if target is None:
            row.problems.append(f"`{token}` is not a project module (a bare name means "
                                "pipelines.<name>)")
        else:
            row.modules.add(target)
    return module, row


@functools.cache
def table() -> dict[str, Row]:
    """``{module name: Row}`` from every ``module | owns | may import`` table of the doc."""
    rows: dict[str, Row] = {}
    in_table = False
    for line in DOC.read_text().splitlines():
        cells = _cells(line)
        if cells is None:
            in_table = False
        elif [c.lower() for c in cells] == HEADER:
            in_table = True
        elif in_table and not all(re.fullmatch(r":?-+:?", c) for c in cells):
            module, row = _read_row(cells)
            if module in rows:
                row.problems.append(f"{module} has more than one row")
            rows[module] = row
    if not rows:
        pytest.fail(f"No `{' | '.join(HEADER)}` table in {DOC.relative_to(ROOT)}.")
    return rows


# -- the checks ----------------------------------------------------------------------

MODULES = sorted(project_files())


def _ids(modules):
    return [project_files()[m] for m in modules]


def _listing(found: list[tuple[int, str]]) -> str:
    return "\n".join(f"  line {line}: {target}" for line, target in found)


@pytest.mark.parametrize("module", MODULES, ids=_ids(MODULES))
def test_imports_follow_the_module_table(module):
    path = project_files()[module]
    row = table().get(module)
    if row is None:
        pytest.fail(f"{path} is not in the module table of docs/architecture.md: add it "
                    "(module | owns | may import).")
    if row.problems:
        pytest.fail(f"{path}'s row in docs/architecture.md cannot be read:\n  "
                    + "\n  ".join(row.problems))
    wrong = [(line, target) for line, target in imports(module) if not row.allows(target)]
    allowed = sorted(row.modules) + [f"{p}.*" for p in sorted(row.packages)]
    assert not wrong, (
        f"{path} imports what its row in docs/architecture.md does not allow:\n"
        f"{_listing(wrong)}\nallowed: {', '.join(allowed) or 'nothing'}. Remove the import, "
        "or change the row in the same change if the layering really changed.")


def test_every_row_of_the_table_is_a_module():
    stale = sorted(name for name in table() if name not in project_files())
    assert not stale, f"docs/architecture.md has rows for modules that do not exist: {stale}"


TOWERS = [m for m in MODULES if m.split(".")[0] == "towers"]


@pytest.mark.parametrize("module", TOWERS, ids=_ids(TOWERS))
def test_towers_import_no_layer_above_them(module):
    above = [(line, target) for line, target in imports(module)
             if target.split(".")[0] in ("ranking", "serving") or target in STAGES]
    assert not above, (f"{project_files()[module]} imports a layer above the towers "
                       f"(ranking, serving or a pipeline stage):\n{_listing(above)}")


NOT_RUNNERS = [m for m in MODULES if m not in RUNNERS]


@pytest.mark.parametrize("module", NOT_RUNNERS, ids=_ids(NOT_RUNNERS))
def test_only_the_cli_and_the_retraining_import_the_training_stages(module):
    found = [(line, target) for line, target in imports(module) if target in TRAINING_STAGES]
    assert not found, (f"{project_files()[module]} imports a training stage; only "
                       f"{', '.join(project_files()[m] for m in RUNNERS)} run them:\n"
                       f"{_listing(found)}")


def _tensorflow_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in TENSORFLOW]
    return found


@pytest.mark.parametrize("path", ["pipelines/config.py", "pipelines/protocol.py"])
def test_configs_and_protocols_import_no_tensorflow(path):
    if not (ROOT / path).exists():
        pytest.skip(f"{path} does not exist yet")
    found = _tensorflow_imports(ROOT / path)
    assert not found, f"{path} imports TensorFlow:\n{_listing(found)}"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_config_loads_no_tensorflow():
    # Transitively, and also through imports inside functions: importing pipelines.config
    # and building and validating every config (as the CLI does) loads no TensorFlow.
    result = _python("import sys, pipelines.config as c\n"
                     "for cls in (c.FeatureConfig, c.RetrievalConfig, c.RankingConfig):\n"
                     "    cls.from_dict(cls().to_dict())\n"
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                     f"{TENSORFLOW!r}))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_cli_help_does_not_load_tensorflow():
    # `python -m pipelines --help` answers in well under a second: building the parser
    # (with --loss's choices) and printing its help touch no TensorFlow.
    result = _python("import sys, pipelines.config, pipelines.__main__ as cli\n"
                     "parser = cli.build_parser()\n"
                     "parser.format_help()\n"
                     "for action in parser._subparsers._group_actions:\n"
                     "    for sub in action.choices.values():\n"
                     "        sub.format_help()\n"
                     "print('tensorflow' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
