"""Build hook (the setuptools ``cmdclass`` named in pyproject.toml): ship the top-level data folders.

The task files and the sample images have one copy, at the repository's top level (``prompts/``,
``sample_images/``). ``[tool.setuptools.package-dir]`` maps each to a data-only package inside
``calibprompt`` (``calibprompt.prompts``, ``calibprompt.sample_images``) and
``[tool.setuptools.package-data]`` names their files, so a wheel carries them as
``calibprompt/prompts/...`` and ``calibprompt/sample_images/...``. setuptools builds only the packages
that ``packages.find`` discovers, and it never discovers a folder outside ``calibprompt/``, so
:class:`BuildPy` adds each package the ``package-dir`` table maps to an existing folder. ``pip wheel``,
``python -m build`` (sdist, then the wheel from it) and ``pip install -e .`` all run it.
:func:`calibprompt.paths.bundled_dir` finds the folders in a checkout and in an installed wheel.
Never imported at run time.
"""
from __future__ import annotations

import os

from setuptools.command.build_py import build_py

__all__ = ["BuildPy"]


class BuildPy(build_py):
    """``build_py`` that also builds the data-only packages named in ``[tool.setuptools.package-dir]``."""

    def finalize_options(self) -> None:
        super().finalize_options()
        packages = self.distribution.packages if self.distribution.packages is not None else []
        for name, folder in sorted((self.distribution.package_dir or {}).items()):
            if name and name not in packages and os.path.isdir(folder):
                packages.append(name)  # the distribution's list: sdist and editable installs see it too
        self.distribution.packages = self.packages = packages
