"""The built wheel is a working install: it carries its package data, and a fresh venv holding only the
wheel's code (dependencies seen through a .pth file, so no network) runs `backprop --version`, `info` and
the offline `demo` with no experiment tracker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import backpropagate

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "src", "examples", "docs")


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info from the test."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.exists():
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = dist.glob("backpropagate-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and this venv's site-packages behind it (its .pth files, the
    editable install's among them, are not processed there, so only the wheel's backpropagate is found)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-compile", str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "zz_host_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BACKPROPAGATE_", "WANDB_", "MLFLOW_")) and k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # No report_to from the environment: the demo itself must choose no tracker (wandb is installed here).
    env.update(HOME=str(home), BACKPROPAGATE_HOME=str(home / "bp"), HF_HOME=str(home / "hf"),
               BACKPROPAGATE_TINY_CACHE=str(home / "tiny"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    return env


@pytest.mark.slow
def test_wheel_carries_its_data_and_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    assert wheel.name.startswith(f"backpropagate-{backpropagate.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    # No test-only module ships: of backpropagate.testing only the tiny-model factory the demo builds on.
    testing = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("backpropagate/testing/") and n.endswith(".py"))
    assert testing == ["__init__.py", "corpus.py", "factory.py", "templates.py"], testing
    assert not [n for n in names if n.startswith(("tests/", "support/", "bench/"))]
    for resource in (REPO / "src" / "backpropagate").rglob("*"):
        if resource.is_file() and "__pycache__" not in resource.parts and (
                resource.name == "py.typed" or "resources" in resource.parts):
            assert resource.relative_to(REPO / "src").as_posix() in names

    venv, home = _fresh_venv(tmp_path, wheel), tmp_path / "home"
    home.mkdir()
    env, bin_dir = _env(home), venv / "bin"

    def run(*args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=home, env=env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    where = run("python", "-c", "import backpropagate; print(backpropagate.__file__)").strip()
    assert Path(where).is_relative_to(venv), where
    assert run("backprop", "--version").strip() == f"backpropagate {backpropagate.__version__}"
    info = run("backprop", "info")
    assert re.search(rf"^backpropagate\s+{re.escape(backpropagate.__version__)}$", info, flags=re.M), info
    assert re.search(r"^torch\s+\S+", info, flags=re.M), info

    out = run("backprop", "demo", "--output", str(tmp_path / "demo"), timeout=900)
    assert "match: yes" in out, out
    assert "wandb" not in out.lower(), out
    assert not (tmp_path / "demo" / "wandb").exists()
    assert (tmp_path / "demo" / "lora").is_dir()
