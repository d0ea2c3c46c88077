"""The offline demo world: a synthetic histology generator, its datasets, a bundled backbone and prompts.

The demo sits on top of the core: the core never imports it. Entry points call :func:`register` to
make the demo's datasets (``demo``, ``demo-binary``) and bundled prompts known to the core's
registries.
"""
from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Register the demo tasks' standard splits as named datasets and the bundled demo prompts.
    Idempotent; cheap (nothing is generated until a dataset's folder is first asked for)."""
    from calibprompt.data.sources import DatasetSource, register_dataset
    from calibprompt.demo.bundle import DEMO_METHODS, bundled_prompt
    from calibprompt.demo.datasets import DEMO_TASKS, SHIFTED_SPLITS, standard_split
    from calibprompt.prompting.library import register_bundled_prompt

    for task in DEMO_TASKS:
        register_dataset(DatasetSource(task, task=task, folder=lambda task=task: standard_split(task),
                                       description=f"the synthetic {task} world's standard split (generated once)"))
        for method in DEMO_METHODS:
            register_bundled_prompt("demo", task, method, bundled_prompt(task, method))
    for name, params in SHIFTED_SPLITS.items():
        register_dataset(DatasetSource(name, task=params["task"], folder=lambda name=name: standard_split(name),
                                       description=f"the synthetic {params['task']} world under a stronger stain "
                                                   f"shift ({params['shift']:g}), for cross-domain evaluation"))
