"""The architecture as a contract: the core imports neither Gradio nor the demo, ``import calibprompt``
is cheap (every public name loads on first use), and the package ships its data."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import calibprompt

PACKAGE = Path(calibprompt.__file__).resolve().parent
CORE_FILES = [p for p in PACKAGE.rglob("*.py") if not {"app", "demo"} & set(p.relative_to(PACKAGE).parts[:1])
              and p.name != "cli.py"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_gradio_or_the_demo():
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if n.split(".")[0] == "gradio"
                                                     or n.startswith("calibprompt.demo"))
                 for p in CORE_FILES}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_the_library_loads_neither_gradio_nor_the_demo():
    code = "import sys, calibprompt as cp; [getattr(cp, n) for n in cp.__all__]; " \
           "print(any(m == 'gradio' or m.startswith('calibprompt.demo') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_package_loads_nothing_heavy_and_every_public_name_resolves():
    code = """
import sys
import calibprompt as cp
print(sorted(m for m in ('gradio', 'scipy.fft', 'calibprompt.demo', 'torch') if m in sys.modules))
missing = [n for n in cp.__all__ if n not in dir(cp)]
assert not missing, f'dir(calibprompt) lacks {missing}'
from calibprompt import Engine, calibration_report, load_backbone
assert Engine.__module__ == 'calibprompt.prompting.engine' and cp.calibration_report is calibration_report
assert cp.evaluation.metrics.calibration_report is calibration_report  # subpackages on first access too
values = {n: getattr(cp, n) for n in cp.__all__}
print(sorted(n for n, v in values.items() if v is None))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    heavy, unresolved = out.stdout.strip().splitlines()
    assert heavy == "[]", f"import calibprompt imported {heavy}"
    assert unresolved == "[]"


def test_the_public_names_are_listed_once():
    """``calibprompt._EXPORTS`` (name -> module) is the one list of public names: ``__all__`` is exactly its
    names, each lives in the module it names, ``__getattr__`` returns that very object, and ``__init__.py``
    names no public name a second time (no import statements, no second literal list)."""
    assert sorted(calibprompt.__all__) == sorted([*calibprompt._EXPORTS, "__version__"])
    assert len(calibprompt.__all__) == len(set(calibprompt.__all__))
    for name, module in calibprompt._EXPORTS.items():
        assert name in vars(importlib.import_module(module)), f"{module} has no {name}"
        assert calibprompt.__getattr__(name) is vars(importlib.import_module(module))[name]
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported = [ast.unparse(node) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module not in ("__future__", "typing")]
    assert imported == [], f"__init__.py imports public names besides _EXPORTS: {imported}"
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    twice = sorted(n for n in calibprompt._EXPORTS if strings.count(n) > 1)
    assert twice == [], f"__init__.py names {twice} more than once"


def test_task_files_and_sample_images_sit_at_the_top_level_once_and_are_package_data():
    """The design card's layout: ``prompts/`` and ``sample_images/`` beside ``calibprompt/``, no second copy
    inside the package, and the build maps them into the wheel (tests/test_wheel.py builds it)."""
    import tomllib

    from calibprompt.paths import SAMPLE_IMAGES_DIR
    from calibprompt.prompting.tasks import PROMPTS_DIR, list_tasks

    if "CALIBPROMPT_PROMPTS_DIR" not in os.environ:
        assert PROMPTS_DIR.resolve() == PACKAGE.parent / "prompts"
    assert SAMPLE_IMAGES_DIR.resolve() == PACKAGE.parent / "sample_images"
    assert not (PACKAGE / "prompts").exists() and not (PACKAGE / "sample_images").exists()
    assert {"covid", "kather", "demo"} <= set(list_tasks())
    assert (SAMPLE_IMAGES_DIR / "labels.csv").is_file()
    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"calibprompt.prompts": "prompts", "calibprompt.sample_images": "sample_images"}
    assert setuptools["package-data"]["calibprompt.prompts"] == ["**/*"]
    assert setuptools["package-data"]["calibprompt.sample_images"] == ["**/*"]
