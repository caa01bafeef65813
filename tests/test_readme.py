"""The README's examples run as written: every ```python block, in order, in one
namespace, against a model trained (briefly) on the default synthetic world, the world
`make run` trains ``data/model`` on (conftest's ``default_model``). tests/test_package.py
runs the same blocks from an installed wheel, outside the checkout. The README's
generated tables are those docs/readme_numbers.py writes from the named run in docs/readme_numbers.json."""

import re
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    """The code of every ```python block (indented ones, e.g. in a list, dedented)."""
    return [textwrap.dedent(code)
            for code in re.findall(r"^[ ]*```python\n(.*?)^[ ]*```", text, flags=re.S | re.M)]


def test_readme_python_blocks_run_on_the_default_model(default_model, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has python examples"
    features_dir, model_dir = default_model
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        # A history title of an example that matches nothing is a broken example.
        warnings.filterwarnings("error", message=".*history entries match no")
        for i, block in enumerate(blocks):
            code = block.replace("data/model", str(model_dir))
            code = code.replace("data/features", str(features_dir))
            code = code.replace("data/anirank.db", _source_db(features_dir))
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "Empty DataFrame" not in printed, "an example printed an empty result"
    if "rec" in namespace:  # the serving example printed its three recommendation tables
        assert printed.count("rank") >= 3


def _source_db(features_dir) -> str:
    """The raw store a feature directory was built from: the README's data/anirank.db."""
    import json

    return json.loads((features_dir / "schema.json").read_text())["source_db"]


def _numbers_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_numbers", ROOT / "docs" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_numbers_are_the_named_runs():
    import json

    numbers = _numbers_module()
    text = (ROOT / "README.md").read_text()
    snapshot = json.loads((ROOT / "docs" / "readme_numbers.json").read_text())
    blocks = {m["name"]: m["body"] for m in numbers.BLOCK.finditer(text)}
    assert set(blocks) == set(numbers.BLOCKS), "every generated table is in the README once"
    assert numbers.render(text, snapshot) == text, (
        "README.md's generated numbers differ from docs/readme_numbers.json: run "
        "`.venv/bin/python docs/readme_numbers.py` (or refresh both from a run with --metrics)")
    # The check has teeth: one digit changed by hand in a generated table is caught, and
    # the walk-forward table carries the snapshot's own ranked - EASE interval.
    body = blocks["walk-forward"]
    d = snapshot["walk_forward"]["ranking"]["differences"]["ranked - EASE"]["ndcg@10"]
    assert f"{d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]" in body
    digit = next(i for i, c in enumerate(body) if c.isdigit())
    edited = text.replace(body, body[:digit] + str((int(body[digit]) + 1) % 10) + body[digit + 1:])
    assert numbers.render(edited, snapshot) == text != edited
    with pytest.raises(ValueError, match="`typo`"):
        numbers.render("<!-- numbers: typo -->\n<!-- /numbers -->", snapshot)
