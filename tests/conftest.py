"""Shared fixtures. The `built` fixture runs the real DVC build once, in a temporary copy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".venv*", ".git", "artifacts", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "*.egg-info", "outputs", "multirun")


def project_env() -> dict[str, str]:
    """The environment stage subprocesses need: this venv's bin first on PATH, and the RKNN
    toolkit's venv, which lives in the real checkout, not in the temporary copies tests build in."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rknn_python = ROOT / ".venv-rknn" / "bin" / "python"
    if rknn_python.exists() and "RKNN_TOOLKIT2_PYTHON" not in env:
        env["RKNN_TOOLKIT2_PYTHON"] = str(rknn_python)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_project(dest: Path) -> Path:
    """A fresh checkout-like copy of the project (no artifacts, no venv) with its own git and DVC."""
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE)
    (dest / "artifacts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "artifacts" / ".gitignore", dest / "artifacts" / ".gitignore")
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dest)
    return dest


def copy_built(src: Path, dest: Path) -> Path:
    """A copy of a built project that a test may edit. The DVC cache is hard-linked, not copied (a
    third of the bytes): its files are content-addressed and read-only, and DVC adds new ones
    instead of writing into old ones. Everything else, the workspace's outputs included, is copied."""
    shutil.copytree(src, dest, symlinks=True, ignore=lambda d, names: ["cache"] if Path(d) == src / ".dvc" else [])
    if (src / ".dvc" / "cache").is_dir():
        shutil.copytree(src / ".dvc" / "cache", dest / ".dvc" / "cache", symlinks=True, copy_function=os.link)
    return dest


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on which the README's build (`dvc repro`, through stages.build: model subgraphs
    side by side) has built every default artifact."""
    repo = copy_project(tmp_path_factory.mktemp("built") / "repo")
    run([sys.executable, "-m", "stages.build"], repo)
    return repo
