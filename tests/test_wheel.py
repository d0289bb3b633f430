"""`pip install .` gives a working program: the wheel holds every module of the checkout and
the migrations, and, installed outside the checkout with no editable install on the path,
it upgrades a fresh SQLite database and imports a catalogue."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_image

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "shopsearch", "indexer", "webapp", "migrations")

#: runs the installed console script `shopsearch` (found through the wheel's entry point) in a
#: process started with -S: no site-packages processing, so no editable-install finder, and
#: the checkout is not on sys.path
RUN_ENTRY_POINT = """
import importlib.metadata as md, json, sys
dist = md.distribution("shopsearch")
ep = next(e for e in dist.entry_points if e.group == "console_scripts" and e.name == "shopsearch")
if sys.argv[1] == "--where":  # where each package would load from (found, not imported: quick)
    from importlib.util import find_spec
    where = {name: find_spec(name).origin for name in ("shopsearch", "indexer.cli", "webapp", "shopsearch.migrations")}
    print(json.dumps({"dist": str(dist.locate_file("")), **where}))
    sys.exit(0)
sys.argv[0] = "shopsearch"
ep.load()()
"""


def _checkout_modules() -> set[str]:
    """Every file the wheel must carry, as its path inside the wheel."""
    out = set()
    for pkg in ("shopsearch", "indexer", "webapp"):
        out |= {p.relative_to(REPO).as_posix() for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    out |= {"shopsearch/migrations/" + p.relative_to(REPO / "migrations").as_posix()
            for p in (REPO / "migrations").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return out


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SHIPPED:  # build from a copy: the build's scratch folders stay out of the checkout
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=120)
    wheel = next(dist.glob("shopsearch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _checkout_modules() - names == set()
    assert "shopsearch/migrations/versions/0001_initial.py" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    deps = sysconfig.get_paths()["purelib"]  # torch, SQLAlchemy, ... of this environment, nothing else
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": f"{site}:{deps}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def shopsearch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", "-c", RUN_ENTRY_POINT, *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)

    where = json.loads(shopsearch("--where").stdout)
    for key in ("dist", "shopsearch", "indexer.cli", "webapp", "shopsearch.migrations"):
        assert Path(where[key]).resolve().is_relative_to(site.resolve()), (key, where[key])

    data = work / "data"
    up = shopsearch("--data-dir", str(data), "db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert (data / "catalogue.db").is_file()

    images = work / "images"
    images.mkdir()
    rows = ["sku,title,image"]
    for i in range(3):
        make_image(i).save(images / f"p{i}.png")
        rows.append(f"P{i},Product {i},images/p{i}.png")
    (work / "products.csv").write_text("\n".join(rows) + "\n")
    imp = shopsearch("--data-dir", str(data), "catalogue", "import", str(work / "products.csv"), "--json")
    assert imp.returncode == 0, imp.stderr
    report = json.loads(imp.stdout)
    assert report["products_created"] == 3 and report["images_added"] == 3 and report["images_failed"] == 0
