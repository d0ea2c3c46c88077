"""The built distributions carry the top-level ``prompts/`` and ``sample_images/`` (one copy in the tree,
mapped into the package by pyproject.toml and ``calibprompt/_build.py``), and an installed wheel finds them
in its own copy, not in the checkout; an editable install finds the checkout's.

Each test builds from a copy of the files a build reads (pyproject.toml, README.md and the three folders),
so nothing is written into the checkout. The builds run without build isolation (no index needed), with
the setuptools of this environment (``pip install -e ".[test]"`` brings one new enough)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "calibprompt", "prompts", "sample_images")
DATA = ("prompts", "sample_images")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")

# What a Python in the fresh virtualenv prints: where the package, the task files and the samples resolve.
PROBE = """
import json, calibprompt
from calibprompt.paths import SAMPLE_IMAGES_DIR, bundled_dir
from calibprompt.prompting.tasks import PROMPTS_DIR, list_tasks, load_task
from calibprompt.demo.bundle import bundled_prompt
print(json.dumps({"package": calibprompt.__file__, "prompts": str(PROMPTS_DIR), "tasks": list_tasks(),
                  "kather": load_task("kather").path, "samples": str(SAMPLE_IMAGES_DIR),
                  "bundled_samples": str(bundled_dir("sample_images")), "demo_prompt": str(bundled_prompt("demo", "coop"))}))
"""


def _setuptools_or_skip() -> None:
    setuptools = pytest.importorskip("setuptools", reason="building the wheel needs setuptools>=77 (pip install -e '.[test]')")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"building the wheel needs setuptools>=77 (pip install -e '.[test]'); found {setuptools.__version__}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what a build reads from the checkout."""
    _setuptools_or_skip()
    src = tmp_path_factory.mktemp("source") / "calibprompt-src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=IGNORED)
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


def _pip(*args: str, python: str = sys.executable, cwd: Path | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    out = subprocess.run([python, "-m", "pip", *args, "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q"], capture_output=True, text=True, cwd=cwd, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _data_files() -> dict[str, bytes]:
    """``{"prompts/kather.json": bytes, ...}``: every file of the top-level data folders."""
    return {p.relative_to(ROOT).as_posix(): p.read_bytes() for name in DATA for p in sorted((ROOT / name).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _pip("wheel", "-w", str(dist), str(source), cwd=dist)
    wheels = list(dist.glob("calibprompt-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _venv(folder: Path) -> str:
    """A fresh virtualenv that sees this environment's packages (torch, ...) but not its calibprompt.

    ``--system-site-packages`` reaches the base interpreter's; when the tests run in a virtualenv
    themselves (CI), a ``.pth`` line adds this one's site-packages after the venv's own (a folder added
    this way has its own ``.pth`` files skipped, so an editable calibprompt there stays out)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "outer-environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return str(python)


def _probe(python: str, cwd: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CALIBPROMPT_PROMPTS_DIR")}
    env["CALIBPROMPT_HOME"] = str(home)
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_wheel_carries_the_task_files_and_sample_images(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {n.removeprefix("calibprompt/"): archive.read(n) for n in names
                   if n.startswith(("calibprompt/prompts/", "calibprompt/sample_images/"))}
    expected = _data_files()
    assert {"prompts/kather.json", "prompts/covid.json", "prompts/demo/demo-coop.safetensors",
            "sample_images/labels.csv", "sample_images/demo-norm-0048.png"} <= set(expected)
    assert shipped == expected  # every file, byte for byte, and nothing else
    assert not {n for n in names if n.startswith(("prompts/", "sample_images/"))}  # not top-level in site-packages
    assert "calibprompt/__init__.py" in names and "calibprompt/assets/demo-backbone/open_clip_config.json" in names


def test_an_installed_wheel_finds_its_own_copy_not_the_checkout(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    _pip("install", "--ignore-installed", str(wheel), python=python, cwd=tmp_path)
    home = tmp_path / "home"
    (home / "prompts").mkdir(parents=True)
    (home / "prompts" / "mine.json").write_text(json.dumps({"name": "mine", "classes": ["a", "b"]}))
    found = _probe(python, tmp_path, home)
    package = Path(found["package"]).parent
    assert package.is_relative_to(tmp_path / "venv"), found
    assert Path(found["prompts"]) == package / "prompts" and Path(found["samples"]) == package / "sample_images"
    assert found["bundled_samples"] == found["samples"]
    assert Path(found["kather"]) == package / "prompts" / "kather.json"
    assert Path(found["demo_prompt"]) == package / "prompts" / "demo" / "demo-coop.json"
    bundled = sorted(Path(n).stem for n in _data_files() if n.startswith("prompts/") and n.count("/") == 1)
    assert found["tasks"] == sorted([*bundled, "mine"])  # the user's own beside the shipped ones
    with open(package / "sample_images" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and all((package / "sample_images" / r["file"]).is_file() for r in rows)


def test_an_editable_install_reads_the_top_level_folders(source, tmp_path):
    python = _venv(tmp_path / "venv")
    _pip("install", "--ignore-installed", "-e", str(source), python=python, cwd=tmp_path)
    found = _probe(python, tmp_path, tmp_path / "home")
    assert Path(found["package"]) == source / "calibprompt" / "__init__.py"
    assert Path(found["prompts"]) == source / "prompts" and Path(found["samples"]) == source / "sample_images"
    assert Path(found["demo_prompt"]) == source / "prompts" / "demo" / "demo-coop.json"
    assert {"covid", "kather", "demo"} <= set(found["tasks"])
    assert not (source / "calibprompt" / "prompts").exists()  # no second copy made


def test_the_sdist_carries_the_folders_and_its_wheel_too(source, tmp_path):
    """What ``python -m build`` does: an sdist, then the wheel built from the unpacked sdist."""
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=source)
    assert out.returncode == 0, out.stderr[-4000:]
    sdist = tmp_path / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {n.removeprefix(top + "/") for n in archive.getnames()}
        archive.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert set(_data_files()) <= members
    assert "calibprompt/_build.py" in members
    dist = tmp_path / "dist"
    _pip("wheel", "-w", str(dist), str(tmp_path / top), cwd=tmp_path)
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as archive:
        shipped = {n.removeprefix("calibprompt/") for n in archive.namelist()
                   if n.startswith(("calibprompt/prompts/", "calibprompt/sample_images/"))}
    assert shipped == set(_data_files())
