"""The layers of the architecture as a contract, read from the source.

The import graph between the package's parts (its subpackages and top-level modules) is built with
``ast`` from every ``import`` and ``from ... import`` statement anywhere in a file (inside functions and
``TYPE_CHECKING`` blocks too; relative imports resolved). It must have no circle, and no module may import
a layer listed above its own in the layer table of the README's "Architecture" section (one row per
layer, top to bottom, its parts in backticks). The core never imports Gradio or the demo world.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

import calibprompt

PACKAGE = Path(calibprompt.__file__).resolve().parent
README = PACKAGE.parent / "README.md"
#: the parts that may import the demo world and Gradio: the entry points and the demo itself
NOT_CORE = {"app", "cli", "__main__", "demo"}

Graph = dict[str, dict[str, list[str]]]  # part -> {imported part: ["file:line", ...]}


# -------------------------------------------------------------------------------------------- the graph

def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """``root/a/b.py`` -> ``("<root>.a.b", False)``; a package's ``__init__.py`` -> (its name, True)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def imported_modules(path: Path, root: Path) -> list[tuple[str, int]]:
    """Every module a file imports, as absolute dotted names with the line of the statement: each
    ``import x.y`` gives ``x.y``; ``from m import a, b`` gives ``m.a`` and ``m.b`` (a name that is not a
    module is resolved to its module by :func:`part_of`); relative imports are resolved against the
    file's package."""
    name, is_package = _module_name(path, root)
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def part_of(module: str, root: Path) -> str | None:
    """The part of the package ``root`` a dotted module name falls in: its subpackage or top-level module
    (``calibprompt.data.images`` -> ``data``), the package itself for a name of its ``__init__``
    (``calibprompt.load_backbone`` -> ``calibprompt``), or None outside the package."""
    parts = module.split(".")
    if parts[0] != root.name:
        return None
    if len(parts) > 1 and ((root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()):
        return parts[1]
    return root.name


def import_graph(root: Path) -> Graph:
    """Which part of the package ``root`` imports which other part, and where (self-imports left out)."""
    graph: Graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        source = part_of(_module_name(path, root)[0], root)
        graph[source]  # every part is a node, importing or not
        for module, line in imported_modules(path, root):
            target = part_of(module, root)
            if target is not None and target != source:
                graph[source][target].append(f"{path.relative_to(root.parent)}:{line}")
    return {part: dict(edges) for part, edges in graph.items()}


def find_circle(graph: Graph) -> list[str] | None:
    """A circle of imports (``[a, b, ..., a]``), or None when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)) is not None:
                return circle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)) is not None:
            return circle
    return None


# ------------------------------------------------------------------------------------------- the table

def layer_table(markdown: str) -> list[list[str]]:
    """The layer table of a README's "Architecture" section, top layer first: each row's parts, from
    the backticked names of its ``packages`` column (``app/`` -> ``app``)."""
    section = markdown.split("### Architecture", 1)[1]
    lines = iter(section.splitlines())
    for line in lines:
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[:2] == ["layer", "packages"]:
            break
    else:
        raise AssertionError("The README's Architecture section has no '| layer | packages | ...' table.")
    rows = []
    for line in lines:
        if not line.lstrip().startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set(cells[0]) <= set("-: "):
            continue  # the header's rule
        rows.append([name.rstrip("/") for name in re.findall(r"`([^`]+)`", cells[1])])
    return rows


def upward_imports(graph: Graph, rows: list[list[str]]) -> list[str]:
    """Every import of a part from a layer listed above the importer's own (rows: top layer first)."""
    level = {part: depth for depth, row in enumerate(rows) for part in row}
    return [f"{src} ({rows[level[src]]}) imports {dst} ({rows[level[dst]]}) at {', '.join(where[:3])}"
            for src, edges in sorted(graph.items()) for dst, where in sorted(edges.items())
            if level[dst] < level[src]]


# -------------------------------------------------------------------------------------- the contract

@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(PACKAGE)


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    return layer_table(README.read_text(encoding="utf-8"))


def test_no_circle_between_the_parts_of_the_package(graph):
    circle = find_circle(graph)
    assert circle is None, " -> ".join(circle) + ": " + "; ".join(
        f"{a} -> {b} at {', '.join(graph[a][b][:3])}" for a, b in zip(circle, circle[1:]))


def test_the_layer_table_lists_every_part_once(graph, rows):
    listed = [part for row in rows for part in row]
    assert len(listed) == len(set(listed)), f"listed twice in the README's layer table: {listed}"
    assert not set(graph) - set(listed), (f"add {sorted(set(graph) - set(listed))} to a layer of the README's "
                                          "Architecture table")
    assert not set(listed) - set(graph), f"the README's layer table lists parts that do not exist: " \
                                         f"{sorted(set(listed) - set(graph))}"
    assert rows[0][0] == "app" and rows[-1][0] == "defaults"  # the top and the foundation


def test_no_module_imports_a_layer_above_its_own(graph, rows):
    assert not upward_imports(graph, rows)


def test_the_core_never_imports_gradio_or_the_demo():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if part_of(_module_name(path, PACKAGE)[0], PACKAGE) in NOT_CORE:
            continue
        for module, line in imported_modules(path, PACKAGE):
            if module.split(".")[0] == "gradio" or module.startswith(f"{PACKAGE.name}.demo"):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offenders


def test_the_layers_issue_19_named_are_in_order(rows):
    """The knots of issue 19 stay untied: images below everything that reads them, tasks below data,
    the runs below the Ray executor that implements their interface."""
    level = {part: depth for depth, row in enumerate(rows) for part in row}
    assert level["app"] < level["service"] < level["cluster"] < level["runs"] < level["data"]
    assert level["data"] < level["prompting"] < level["backbones"] < level["imaging"] < level["defaults"]


# ----------------------------------------------------------------------- the checks can fail: a fake tree

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture()
def fake(tmp_path) -> Path:
    """``pkg`` with a circle ``low`` <-> ``high`` through an import inside a function, written relative."""
    return _write(tmp_path / "pkg", {
        "__init__.py": "",
        "base.py": "import os\n",
        "low/__init__.py": "from pkg import base\n",
        "low/images.py": "def load():\n    from ..high.engine import run  # inside a function, relative\n",
        "high/__init__.py": "",
        "high/engine.py": "from pkg.low.images import load\nimport pkg.base\nfrom . import helpers\n",
        "high/helpers.py": "from pkg import nothing_here\n",
    })


def test_the_graph_counts_imports_in_functions_resolves_relative_ones_and_finds_the_circle(fake):
    graph = import_graph(fake)
    assert set(graph) == {"pkg", "base", "low", "high"}
    assert graph["low"] == {"base": ["pkg/low/__init__.py:1"], "high": ["pkg/low/images.py:2"]}
    assert set(graph["high"]) == {"low", "base", "pkg"}  # a name of pkg's __init__ is pkg itself
    assert "high" not in graph["high"]  # ``from . import helpers`` stays inside high
    assert find_circle(graph) == ["high", "low", "high"]
    (fake / "low" / "images.py").write_text("def load():\n    return None\n")
    assert find_circle(import_graph(fake)) is None


def test_an_import_of_a_higher_layer_is_found(fake):
    (fake / "low" / "images.py").write_text("def load():\n    return None\n")
    readme = ("# x\n\n### Architecture\n\nText.\n\n| layer | packages | what |\n|---|---|---|\n"
              "| top | `pkg`, `high/` | the engine |\n| bottom | `low/` | images |\n| foundation | `base` | os |\n\n"
              "### Next\n\n| layer | packages |\n|---|---|\n| other | `nothing` |\n")
    rows = layer_table(readme)
    assert rows == [["pkg", "high"], ["low"], ["base"]]
    graph = import_graph(fake)
    assert upward_imports(graph, rows) == []
    assert upward_imports(graph, [["low"], ["pkg", "high"], ["base"]]) == [
        "high (['pkg', 'high']) imports low (['low']) at pkg/high/engine.py:1"]
    assert upward_imports(graph, [["pkg", "high"], ["low"], ["base"]][::-1]) != []


# ---------------------------------------------------------------- executors: chosen by the caller, not imported

def test_a_comparison_trains_through_the_executor_it_is_handed(calibprompt_home, tmp_path):
    from calibprompt.runs.compare import run_comparison
    from calibprompt.runs.executors import OneByOne
    from calibprompt.runs.store import RunStore
    from test_training import make_dataset

    dataset = make_dataset(tmp_path / "tissue", n_train=4, n_test=3)
    handed = []

    def executor(groups, store, **callbacks):
        handed.append([(job.method, job.seed) for group in groups for job in group.jobs])
        OneByOne(n_boot=20)(groups, store, **callbacks)

    store = RunStore()
    rows = run_comparison("tiny-random", str(dataset), ["zeroshot", "coop"], [1, 2], shots=2, epochs=1, n_boot=20,
                          device="cpu", store=store, executor=executor)
    assert handed == [[("coop", 1), ("coop", 2)]]  # one group, zero-shot evaluated by the caller
    assert [(r["method"], r["seed"]) for r in rows] == [("zeroshot", 1), ("coop", 1), ("zeroshot", 2), ("coop", 2)]
    assert [store.get_run(r["run_id"]).status for r in rows if r["method"] == "coop"] == ["done", "done"]


@pytest.mark.parametrize("kind", ["batched", "one-by-one"])
def test_an_executor_leaves_no_run_queued_after_a_failure(kind, calibprompt_home, tmp_path):
    import shutil

    from calibprompt.runs.executors import JobGroup, local_executor
    from calibprompt.runs.jobs import TrainJob
    from calibprompt.runs.store import RunStore
    from test_training import make_dataset

    good, gone = (make_dataset(tmp_path / name, n_train=4, n_test=3) for name in ("good", "gone"))
    store = RunStore()
    job = dict(model="tiny-random", shots=2, epochs=1, device="cpu", method="coop")
    groups = [JobGroup.create(store, [TrainJob(dataset=str(gone), seed=s, **job) for s in (1, 2)]),
              JobGroup.create(store, [TrainJob(dataset=str(good), seed=1, **job)])]
    shutil.rmtree(gone)  # the first group cannot open its data
    with pytest.raises(ValueError, match="not found|neither"):
        local_executor(kind == "batched", n_boot=20)(groups, store)
    statuses = [store.get_run(run_id).status for group in groups for run_id in group.run_ids]
    assert statuses == ["failed"] * 3
    assert "Not trained: an earlier run" in store.get_run(groups[1].run_ids[0]).error
