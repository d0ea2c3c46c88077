"""The architecture as a contract: the core imports neither Gradio nor the demo, ``import calibprompt``
is cheap (every public name loads on first use), and the package ships its data."""
from __future__ import annotations

import ast
import importlib
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


def test_the_lazy_exports_match_the_type_checking_imports():
    """``calibprompt._EXPORTS`` (what is imported on first access) and the ``TYPE_CHECKING`` imports (what
    tools see) name the same things from the same modules, and ``__all__`` is exactly those names."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == calibprompt._EXPORTS
    assert sorted(calibprompt.__all__) == sorted([*seen, "__version__"])
    for name, module in calibprompt._EXPORTS.items():
        assert name in vars(importlib.import_module(module)), f"{module} has no {name}"


def test_task_files_and_sample_images_are_package_data():
    from calibprompt.paths import SAMPLE_IMAGES_DIR
    from calibprompt.prompting.tasks import PROMPTS_DIR, list_tasks

    assert PROMPTS_DIR.resolve().parent == PACKAGE and SAMPLE_IMAGES_DIR.resolve().parent == PACKAGE
    assert {"covid", "kather", "demo"} <= set(list_tasks())
    assert (SAMPLE_IMAGES_DIR / "labels.csv").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert '"prompts/**/*"' in pyproject and '"sample_images/**/*"' in pyproject
