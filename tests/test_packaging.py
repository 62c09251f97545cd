"""The wheel builds, installs into a fresh virtual environment and runs."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from conftest import REPO


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # --no-build-isolation: build with the Cython and setuptools already in this venv, so the
    # test does not depend on fetching build tools; the result is the same wheel.
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = list(wheels.glob("fastxmpp-*.whl"))
    assert "cp3" in wheel.name and "linux" in wheel.name  # a binary wheel

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    version = subprocess.run(
        [str(env_dir / "bin" / "fastxmpp"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("fastxmpp ")
    # The compiled core came with the wheel, not from the source tree.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import fastxmpp._parser as p, fastxmpp._router as r; "
            "print(p.__file__); print(r.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(str(env_dir) in line for line in probe.stdout.split())
