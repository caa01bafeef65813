"""The README's examples run as written: every ```python block, in order, in one
namespace, against a model trained (briefly) on the default synthetic world, the world
`make run` trains ``data/model`` on (conftest's ``default_model``). tests/test_package.py
runs the same blocks from an installed wheel, outside the checkout."""

import re
import textwrap
import warnings
from pathlib import Path

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
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "Empty DataFrame" not in printed, "an example printed an empty result"
    if "rec" in namespace:  # the serving example printed its three recommendation tables
        assert printed.count("rank") >= 3
