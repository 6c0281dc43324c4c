"""``interest-stream --version``: the version pyproject.toml declares, wherever it runs from."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from stream.cli import version as version_module
from stream.cli.version import version

ROOT = Path(__file__).resolve().parents[2]
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_command_reports_the_declared_version():
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"interest-stream {DECLARED}"


def test_the_version_is_in_the_changelog():
    assert f"## [{DECLARED}]" in (ROOT / "CHANGELOG.md").read_text()


def test_without_a_checkout_the_installed_metadata_speaks(tmp_path, monkeypatch):
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something-else"\nversion = "9.9"\n')
    monkeypatch.setattr(version_module.metadata, "version", lambda name: "1.2.3")
    assert version(other) == "1.2.3"
    assert version(tmp_path / "missing.toml") == "1.2.3"


def test_nothing_to_read_is_unknown(tmp_path, monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module.metadata, "version", not_installed)
    (tmp_path / "pyproject.toml").write_text("not toml [")
    assert version(tmp_path / "pyproject.toml") == "unknown"


@pytest.mark.parametrize("text", ['[project]\nname = "interest-stream"\nversion = "2.0.1"\n'])
def test_a_checkout_reads_its_own_pyproject(tmp_path, text):
    (tmp_path / "pyproject.toml").write_text(text)
    assert version(tmp_path / "pyproject.toml") == "2.0.1"
