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


def script_fixture(relative_path):
    """A session-wide fixture holding the loaded module of one algorithm script."""

    @pytest.fixture(scope="session")
    def fixture():
        return load_script(relative_path)

    return fixture


diffsac, sac = script_fixture("diffsac.py"), script_fixture("baselines/sac.py")
diffppo, ppo = script_fixture("diffppo.py"), script_fixture("baselines/ppo.py")
da_reppo, reppo = script_fixture("da_mdp_reppo.py"), script_fixture("baselines/reppo.py")
diffwpo, wpo = script_fixture("diffwpo.py"), script_fixture("baselines/wpo.py")


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
