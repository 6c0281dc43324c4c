"""The version ``interest-stream --version`` reports.

A source checkout (``pyproject.toml`` beside the packages, as in a clone run
with ``PYTHONPATH``) reports the version written there, so a stale install
of another tree never speaks for this one; otherwise the installed
distribution's metadata says it.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTION", "version"]

DISTRIBUTION = "interest-stream"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _checkout_version(pyproject: Path) -> str | None:
    """The ``[project] version`` of ``pyproject`` when it describes this project."""
    try:
        with pyproject.open("rb") as fh:
            project = tomllib.load(fh).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return None
    return str(project["version"])


def version(pyproject: Path = _PYPROJECT) -> str:
    """This tree's version, e.g. ``"0.1.0"``; ``"unknown"`` when nothing says it."""
    found = _checkout_version(pyproject)
    if found is not None:
        return found
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
