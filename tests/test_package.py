"""anirank as a package: the wheel installs into a fresh environment and, from a directory
outside the checkout, loads a model and recommends, with its commands on the path.

The fresh venv takes the wheel with ``--no-deps`` and sees the already installed
TensorFlow stack through a ``.pth`` line (a second TensorFlow download would be a
gigabyte); the wheel's declared requirements are checked against requirements.txt.
"""

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import pipelines
from serving import Recommender
from tests.test_readme import python_blocks

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _requirement(text: str) -> tuple[str, SpecifierSet]:
    req = Requirement(text)
    return canonicalize_name(req.name), req.specifier


def _pins(path: Path) -> set:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {_requirement(line) for line in lines if line and not line.startswith("-")}


def test_wheel_installs_and_serves_outside_the_checkout(tiny_ranked, default_model, tmp_path):
    model_dir = tiny_ranked[0]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "wheels", ROOT])
    (wheel,) = (tmp_path / "wheels").glob("anirank-*.whl")
    assert wheel.name == f"anirank-{pipelines.__version__}-py3-none-any.whl"
    packed = set(zipfile.ZipFile(wheel).namelist())   # the service's page comes along
    assert {"serving/templates/index.html", "serving/static/app.js", "serving/static/app.css"} <= packed

    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    users = Recommender.from_pretrained(str(model_dir)).users["user_id"].to_numpy()[:3].tolist()
    script = f"""
import importlib.metadata as md, json
import serving
from serving import Recommender
rec = Recommender.from_pretrained({str(model_dir)!r})
out = rec.recommend({users}, k=5)
print(json.dumps({{"serving": serving.__file__, "anime": out["anime_id"].tolist(),
                  "version": md.version("anirank"), "requires": md.requires("anirank")}}))
"""
    done = _run([python, "-c", script], cwd=elsewhere)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["serving"]).is_relative_to(venv)          # the wheel's copy, not ROOT's
    want = Recommender.from_pretrained(str(model_dir)).recommend(users, k=5)
    assert got["anime"] == want["anime_id"].tolist()
    assert got["version"] == pipelines.__version__
    declared = [(_requirement(r.split(";")[0]), Requirement(r).marker) for r in got["requires"]]
    assert {r for r, marker in declared if marker is None} == _pins(ROOT / "requirements.txt")
    for extra, pins in (("dev", "requirements-test.txt"), ("scale", "requirements-scale.txt")):
        assert {r for r, marker in declared
                if marker is not None and marker.evaluate({"extra": extra})} == _pins(ROOT / pins)

    # The README's Python examples, as a user of the wheel runs them.
    features_dir, default_dir = default_model
    readme = "\n".join(python_blocks((ROOT / "README.md").read_text()))
    readme = readme.replace("data/model", str(default_dir)).replace("data/features", str(features_dir))
    readme = readme.replace("data/anirank.db", json.loads(
        (features_dir / "schema.json").read_text())["source_db"])
    (elsewhere / "readme.py").write_text(
        "import warnings\nwarnings.filterwarnings('error', message='.*history entries match no')\n"
        + readme)
    printed = _run([python, "readme.py"], cwd=elsewhere).stdout
    assert printed.count("rank") >= 3 and "Empty DataFrame" not in printed

    stages = _run([venv / "bin" / "anirank", "--help"], cwd=elsewhere).stdout
    assert all(stage in stages for stage in ("synth", "import-kaggle", "features",
                                             "train-retrieval", "train-ranking",
                                             "train-scores", "evaluate",
                                             "publish", "run"))
    assert "users" in _run([venv / "bin" / "anirank-crawl", "--help"], cwd=elsewhere).stdout
    version = _run([venv / "bin" / "anirank", "--version"], cwd=elsewhere).stdout.strip()
    assert version == f"anirank {pipelines.__version__}"
