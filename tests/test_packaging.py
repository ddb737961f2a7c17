"""``pip install .`` gives an importable picollm and its commands, outside the repository's folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

COMMANDS = ("picollm-train", "picollm-evaluate", "picollm-generate", "picollm-sweep", "picollm-analyze")


def test_the_built_wheel_installs_the_package_and_its_commands(tmp_path: Path) -> None:
    def run(*args: str, cwd: Path = tmp_path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]
        return proc

    # Built from a copy of what the wheel is made of: setuptools leaves build/ and *.egg-info beside its source.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "picollm", source / "picollm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheel"), cwd=source)
    (wheel,) = (tmp_path / "wheel").glob("picollm-*.whl")
    site = tmp_path / "site"
    run(*pip, "install", "--no-deps", "--target", str(site), str(wheel))  # the dependencies are this venv's
    env = {**os.environ, "PYTHONPATH": str(site)}
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = run(
        sys.executable, "-c", "import picollm; print(picollm.__file__, picollm.train.__module__)", cwd=away, env=env
    )
    assert where.stdout.split() == [str(site / "picollm" / "__init__.py"), "picollm.api"]
    for command in COMMANDS:
        assert "usage: " in run(str(site / "bin" / command), "--help", cwd=away, env=env).stdout, command
    assert (
        "usage: python -m picollm.train"
        in run(sys.executable, "-m", "picollm.train", "--help", cwd=away, env=env).stdout
    )
