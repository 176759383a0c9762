import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path):
    """Imports an algorithm script as a module (its training loop sits behind `if __name__ == "__main__"`)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def diffsac():
    return load_script("diffsac.py")


@pytest.fixture(scope="session")
def sac():
    return load_script("baselines/sac.py")


@pytest.fixture(scope="session")
def diffppo():
    return load_script("diffppo.py")


@pytest.fixture(scope="session")
def ppo():
    return load_script("baselines/ppo.py")


@pytest.fixture(scope="session")
def da_reppo():
    return load_script("da_mdp_reppo.py")


@pytest.fixture(scope="session")
def reppo():
    return load_script("baselines/reppo.py")


@pytest.fixture(scope="session")
def diffwpo():
    return load_script("diffwpo.py")


@pytest.fixture(scope="session")
def wpo():
    return load_script("baselines/wpo.py")


def run_script(script, *args, cwd, timeout=300):
    """Runs `python script args...` in cwd, one torch thread, headless rendering; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="egl", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_metrics(run_dir):
    """All rows of a run's metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def only_run_dir(tmp_path):
    """The one run directory a script wrote under tmp_path/runs."""
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir
