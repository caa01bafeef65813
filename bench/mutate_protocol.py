"""Mutation testing of the evaluation protocol (pipelines/protocol.py) under its fast tests.

    .venv/bin/python bench/mutate_protocol.py            # every mutant, one at a time
    .venv/bin/python bench/mutate_protocol.py --list     # the mutants, not run
    .venv/bin/python bench/mutate_protocol.py --only-line 312 --limit 5

Each mutant is one small change to the module's syntax tree (``ast``): a comparison
swapped (``<`` to ``<=`` or ``>=``, ``==`` to ``!=``, ``is`` to ``is not``), an arithmetic
or bitwise operator swapped (``+ -``, ``* /``, ``& |``), a numeric constant moved (an int
``n`` to ``n + 1``; a float in (0, 1) by 0.1, others by 1), ``True``/``False`` flipped,
``and``/``or`` swapped, or a ``not``, unary minus or ``~`` removed. Docstrings, type
annotations and import lines are left alone. The real pipelines/protocol.py is never
written: the repository (without data/, .venv/, .git/ and build output) is copied to a
temporary directory and each mutant is written over the copy's protocol.py.

The fast tests (``TESTS``: the protocol's own, and the candidate generator's and the
retrieval baselines' tests, which call it on the tiny synthetic world; none uses a
trained model) run against each mutant with ``pytest -x``: a mutant is killed when they
fail, survives when they pass, and a run past ``--timeout`` is stopped and counted as
killed. By default each run is a fork of this process with the heavy third-party
modules (TensorFlow, pandas) already imported, about a second a mutant; ``--mode
subprocess`` starts a fresh interpreter per mutant instead (a few seconds each).

The last line is the headline: ``killed K of N mutants (P%)``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "pipelines/protocol.py"
TESTS = ("tests/test_protocol.py", "tests/test_candidates.py", "tests/test_baselines.py")
NOT_COPIED = {"data", ".venv", ".git", "build", "__pycache__", ".pytest_cache", ".ruff_cache",
              ".mypy_cache", "node_modules"}
# Third-party modules the tests load, imported once before forking (TensorFlow alone is
# about 3 s a run); the project's own modules are left for each fork to import.
PRELOAD = ("numpy", "pandas", "pyarrow", "scipy", "pytest", "filelock", "requests", "tqdm",
           "tensorflow", "tf_keras", "tensorflow_recommenders", "scann")

COMPARE_SWAPS = {ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt),
                 ast.Gt: (ast.GtE, ast.LtE), ast.GtE: (ast.Gt, ast.Lt),
                 ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.Is: (ast.IsNot,),
                 ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
BINOP_SWAPS = {ast.Add: (ast.Sub,), ast.Sub: (ast.Add,), ast.Mult: (ast.Div,),
               ast.Div: (ast.Mult,), ast.FloorDiv: (ast.Div,), ast.Mod: (ast.FloorDiv,),
               ast.BitAnd: (ast.BitOr,), ast.BitOr: (ast.BitAnd,)}
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
          ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
          ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
          ast.FloorDiv: "//", ast.Mod: "%", ast.BitAnd: "&", ast.BitOr: "|",
          ast.And: "and", ast.Or: "or", ast.Not: "not", ast.USub: "-", ast.Invert: "~"}
SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass
class Mutant:
    index: int       # the node's position in ``_nodes``' walk
    kind: str        # compare, binop, boolop, unary, constant, delete
    change: object   # (op position, new op class), new op class, or the new constant
    line: int
    before: str = ""
    after: str = ""
    source: str = ""
    outcome: str = ""
    seconds: float = 0.0

    def label(self, width: int = 56) -> str:
        before, after = " ".join(self.before.split()), " ".join(self.after.split())
        if max(len(before), len(after)) > width:   # a window on the first difference
            at = next((i for i, (x, y) in enumerate(zip(before, after)) if x != y),
                      min(len(before), len(after)))
            start = max(0, at - width // 2)
            before, after = (("..." if start else "") + text[start:start + width]
                             + ("..." if len(text) > start + width else "")
                             for text in (before, after))
        return f"L{self.line:<4} {self.kind:<8} {before} -> {after}"


def _is_docstring(node: ast.AST) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _nodes(node: ast.AST):
    """Every node that may be mutated, in a fixed order: imports, annotations and
    docstrings (with everything under them) left out."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return
    yield node
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns"):
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if not isinstance(item, ast.AST):
                continue
            if field == "body" and i == 0 and isinstance(node, SCOPES) and _is_docstring(item):
                continue
            yield from _nodes(item)


def _float_shift(value: float) -> float:
    if 0 < value < 1:   # probabilities and quantile levels stay in (0, 1)
        return round(value + 0.1, 10) if value + 0.1 < 1 else round(value - 0.1, 10)
    return value + 1.0


def mutants_of(tree: ast.Module) -> list[Mutant]:
    out = []
    for index, node in enumerate(_nodes(tree)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            out += [Mutant(index, "compare", (j, new), line)
                    for j, op in enumerate(node.ops) for new in COMPARE_SWAPS[type(op)]]
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP_SWAPS:
            out += [Mutant(index, "binop", new, line) for new in BINOP_SWAPS[type(node.op)]]
        elif isinstance(node, ast.BoolOp):
            out.append(Mutant(index, "boolop", ast.Or if isinstance(node.op, ast.And)
                              else ast.And, line))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub,
                                                                     ast.Invert)):
            out.append(Mutant(index, "unary", None, line))
        if isinstance(node, ast.AugAssign) or (
                isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in {n.id for n in ast.walk(node.value)
                                           if isinstance(n, ast.Name)}):
            out.append(Mutant(index, "delete", None, line))   # x = f(x): a filter, skipped
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                out.append(Mutant(index, "constant", not value, line))
            elif isinstance(value, int):
                out.append(Mutant(index, "constant", value + 1, line))
            elif isinstance(value, float):
                out.append(Mutant(index, "constant", _float_shift(value), line))
    return out


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(item is old for item in value):
                value[[item is old for item in value].index(True)] = new
                return
    raise LookupError("node not found")


def _parents(tree: ast.AST) -> dict:
    return {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def apply(tree: ast.Module, mutant: Mutant) -> None:
    """Fills ``mutant``'s source and its before/after text (the changed expression; for a
    constant or a unary operator, the expression around it)."""
    tree = copy.deepcopy(tree)
    node = list(_nodes(tree))[mutant.index]
    shown = node
    if mutant.kind in ("constant", "unary"):
        parents = _parents(tree)
        shown = parents[id(node)]
        while isinstance(shown, (ast.keyword, ast.UnaryOp)) and id(shown) in parents:
            shown = parents[id(shown)]
    mutant.before = ast.unparse(shown)
    if mutant.kind == "compare":
        j, new = mutant.change
        node.ops[j] = new()
    elif mutant.kind in ("binop", "boolop"):
        node.op = mutant.change()
    elif mutant.kind == "constant":
        node.value = mutant.change
    elif mutant.kind == "unary":
        _replace(tree, node, node.operand)
        if shown is node:
            shown = node.operand
    elif mutant.kind == "delete":
        shown = ast.Pass()
        _replace(tree, node, shown)
    mutant.after = ast.unparse(shown)
    mutant.source = ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def generate(path: Path) -> tuple[str, list[Mutant]]:
    """The module as ``ast.unparse`` writes it (what the baseline runs) and its mutants,
    a mutant that unparses to the original or to an earlier mutant left out."""
    tree = ast.parse(path.read_text(), str(path))
    original = ast.unparse(tree) + "\n"
    seen, out = {original}, []
    for mutant in mutants_of(tree):
        apply(tree, mutant)
        if mutant.source not in seen:
            seen.add(mutant.source)
            out.append(mutant)
    return original, out


# ---------------------------------------------------------------------------------------
# Running.

def copy_repo(destination: Path) -> None:
    def ignore(directory, names):
        return {n for n in names if n in NOT_COPIED or n.endswith(".egg-info")}

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)


def pytest_args(slot: Path, tests) -> list[str]:
    return ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            f"--basetemp={slot / '.basetemp'}", *tests]


def _outcome(code: int) -> str:
    if code == 0:
        return "survived"
    if code in (1, 2, 3):   # tests failed; collection or import error; internal error
        return "killed"
    return f"error (exit {code})"


class Runner:
    """Runs the tests of one mutant at a time in each of ``jobs`` copies of the repo."""

    def __init__(self, work: Path, jobs: int, mode: str, tests, timeout: float):
        self.slots = [work / f"slot{i}" for i in range(jobs)]
        self.mode, self.tests, self.timeout = mode, list(tests), timeout
        for slot in self.slots:
            copy_repo(slot)
        sys.dont_write_bytecode = True   # a stale .pyc of an earlier mutant is never read
        if mode == "fork":
            # The environment the package sets before TensorFlow loads (Keras 2, quiet
            # logs), from the copy's pipelines/_env.py, run without importing the package.
            runpy.run_path(str(self.slots[0] / "pipelines" / "_env.py"))
            for name in PRELOAD:
                try:
                    __import__(name)
                except ImportError:
                    pass
            ours = [m for m in sys.modules
                    if m.split(".")[0] in ("pipelines", "towers", "ranking", "tests")]
            assert not ours, f"the project's modules must load in each fork: {ours}"

    def _start(self, slot: Path, source: str):
        (slot / TARGET).write_text(source)
        log = slot / ".pytest.log"
        if self.mode == "subprocess":
            env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                   "PYTHONDONTWRITEBYTECODE": "1"}
            with open(log, "w") as out:
                return subprocess.Popen([sys.executable, "-m", "pytest",
                                         *pytest_args(slot, self.tests)], cwd=slot, env=env,
                                        stdout=out, stderr=subprocess.STDOUT)
        pid = os.fork()
        if pid == 0:   # the child: run the tests against the slot's copy, then exit
            code = 3
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(slot)
                sys.path.insert(0, str(slot))
                import pytest
                code = int(pytest.main(pytest_args(slot, self.tests)))
            except BaseException:   # noqa: BLE001 - whatever happens, the child exits here
                code = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    @staticmethod
    def _poll(handle):
        """The exit code, or None while running."""
        if isinstance(handle, subprocess.Popen):
            return handle.poll()
        pid, status = os.waitpid(handle, os.WNOHANG)
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status)

    @staticmethod
    def _kill(handle) -> None:
        if isinstance(handle, subprocess.Popen):
            handle.kill()
            handle.wait()
        else:
            os.kill(handle, signal.SIGKILL)
            os.waitpid(handle, 0)

    def run(self, sources, report=None) -> list[tuple[str, float]]:
        """``(outcome, seconds)`` of each source, in order; ``report(i, outcome,
        seconds)`` as each finishes."""
        results = [None] * len(sources)
        pending = list(enumerate(sources))
        running = {}   # slot index -> (source index, handle, start)
        try:
            while pending or running:
                for s in range(len(self.slots)):
                    if s not in running and pending:
                        i, source = pending.pop(0)
                        running[s] = (i, self._start(self.slots[s], source), time.monotonic())
                time.sleep(0.02)
                for s, (i, handle, start) in list(running.items()):
                    elapsed = time.monotonic() - start
                    code = self._poll(handle)
                    if code is None and elapsed < self.timeout:
                        continue
                    if code is None:
                        self._kill(handle)
                        outcome = "timed out"
                    else:
                        outcome = _outcome(code)
                    results[i] = (outcome, elapsed)
                    del running[s]
                    if report:
                        report(i, outcome, elapsed)
        finally:
            for _, handle, _ in running.values():
                self._kill(handle)
        return results

    def log(self, slot: int = 0) -> str:
        return (self.slots[slot] / ".pytest.log").read_text(errors="replace")


def _lines(spec: str) -> set[int]:
    out = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutation score of pipelines/protocol.py under its fast tests. Prints a "
                    "table, the survivors, and last `killed K of N mutants (P%)`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit", type=int, default=None,
                        help="run only the first N mutants (after --only-line)")
    parser.add_argument("--only-line", default=None, metavar="LINES",
                        help="only mutants on these lines of protocol.py, e.g. 312 or "
                             "30,300-320")
    parser.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="mutants run at once (each in its own copy of the repo)")
    parser.add_argument("--mode", choices=("fork", "subprocess"), default="fork",
                        help="fork this pre-warmed process per mutant, or start a fresh "
                             "interpreter")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a mutant's tests may take (unset: 5 x the "
                             "unmutated run, at least 20)")
    parser.add_argument("--tests", nargs="+", default=list(TESTS),
                        help="test files run against each mutant")
    parser.add_argument("--quiet", "-q", action="store_true", help="no line per mutant")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary copy of the repo (its path is printed)")
    args = parser.parse_args(argv)

    tick = time.monotonic()
    original, mutants = generate(ROOT / TARGET)
    if args.only_line:
        wanted = _lines(args.only_line)
        mutants = [m for m in mutants if m.line in wanted]
    if args.limit is not None:
        mutants = mutants[:args.limit]
    if args.list:
        for m in mutants:
            print(m.label())
        print(f"{len(mutants)} mutants")
        return 0

    work = Path(tempfile.mkdtemp(prefix="mutate_protocol_"))
    try:
        runner = Runner(work, max(1, args.jobs), args.mode, args.tests, timeout=600.0)
        # The unmutated module (as unparsed) must pass, and a module that cannot import
        # must fail: else the copy is not what the tests load.
        canary = original + "\nraise RuntimeError('mutation canary')\n"
        (base, base_seconds), (dead, _) = runner.run([original, canary])
        if base != "survived":
            print(f"the unmutated module fails its tests ({base}):\n{runner.log()}")
            return 2
        if dead != "killed":
            print(f"a module that cannot import passes the tests ({dead}): the tests do not "
                  f"load the copy in {work}")
            return 2
        runner.timeout = args.timeout or max(20.0, 5 * base_seconds)
        print(f"{len(mutants)} mutants of {TARGET}; tests: {' '.join(args.tests)}; "
              f"unmutated run {base_seconds:.1f} s, timeout {runner.timeout:.0f} s, "
              f"mode {args.mode}, jobs {len(runner.slots)}", flush=True)

        def report(i, outcome, seconds):
            mutants[i].outcome, mutants[i].seconds = outcome, seconds
            if not args.quiet:
                print(f"[{i + 1:>3}/{len(mutants)}] {outcome:<9} {seconds:5.1f}s  "
                      f"{mutants[i].label()}", flush=True)

        runner.run([m.source for m in mutants], report)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    count = {k: sum(m.outcome == k for m in mutants) for k in ("killed", "survived", "timed out")}
    errors = [m for m in mutants if m.outcome.startswith("error")]
    dead = count["killed"] + count["timed out"]
    score = 100.0 * dead / len(mutants) if mutants else float("nan")
    print()
    print(f"{'mutants':<28}{len(mutants):>6}")
    print(f"{'killed (tests failed)':<28}{count['killed']:>6}")
    print(f"{'timed out (count as killed)':<28}{count['timed out']:>6}")
    print(f"{'survived':<28}{count['survived']:>6}")
    if errors:
        print(f"{'errors (neither)':<28}{len(errors):>6}")
    print(f"{'score':<28}{score:>5.1f}%")
    print(f"{'runtime':<28}{time.monotonic() - tick:>5.0f} s")
    survivors = [m for m in mutants if m.outcome == "survived"]
    if survivors:
        print("\nsurvivors (line, original -> mutant):")
        for m in survivors:
            print(f"  {m.label()}")
    for m in errors:
        print(f"  {m.outcome}: {m.label()}")
    print(f"\nkilled {dead} of {len(mutants)} mutants ({score:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
