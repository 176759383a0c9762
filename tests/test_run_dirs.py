"""Two runs that start in the same second under the same env, exp-name and seed must not share a run folder.

Each script names its folder runs/{env}__{exp_name}__{seed}__{unix time}, as CleanRL does; when that folder
already exists it writes to {name}_2 (then _3, ...) instead of mixing its logs and model into the other run's.
The runs are tiny and use the turning double well, which needs no physics.
"""

import time

import pytest

from tests.conftest import read_metrics, run_script

ENV = "envs.turning_double_well:TurningDoubleWell-v0"
BUDGETS = {
    "diffsac.py": ("--total-timesteps", 300, "--learning-starts", 200, "--batch-size", 32, "--diffusion-steps", 2),
    "baselines/sac.py": ("--total-timesteps", 300, "--learning-starts", 200, "--batch-size", 32),
    "diffppo.py": ("--total-timesteps", 64, "--num-steps", 64, "--num-minibatches", 2, "--update-epochs", 1, "--diffusion-steps", 2),
    "baselines/ppo.py": ("--total-timesteps", 64, "--num-steps", 64, "--num-minibatches", 2, "--update-epochs", 1),
}
TINY_REPPO = ("--total-timesteps", 32, "--num-envs", 2, "--num-steps", 16, "--num-minibatches", 2, "--update-epochs", 1)
for script in ["da_mdp_reppo.py", "diffwpo.py"]:
    BUDGETS[script] = TINY_REPPO + ("--diffusion-steps", 2)
for script in ["baselines/reppo.py", "baselines/wpo.py"]:
    BUDGETS[script] = TINY_REPPO


@pytest.mark.parametrize("script", list(BUDGETS))
def test_a_taken_run_folder_is_left_alone(script, tmp_path):
    # occupy the folder names of the next two minutes, as a run started in the same second would
    now = int(time.time())
    taken = [tmp_path / "runs" / f"{ENV.replace(':', '_')}__clash__1__{t}" for t in range(now, now + 120)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "other_run.txt").write_text("not yours")
    result = run_script(
        script, "--env-id", ENV, "--exp-name", "clash", "--seed", 1, *BUDGETS[script], "--eval-episodes", 1, "--save-model", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert all(sorted(p.name for p in folder.iterdir()) == ["other_run.txt"] for folder in taken)
    (own,) = set((tmp_path / "runs").iterdir()) - set(taken)
    assert own.name.endswith("_2") and own.name[:-2] in {folder.name for folder in taken}
    assert {"args.json", "metrics.jsonl", "model.pt"} <= {p.name for p in own.iterdir()}
    assert read_metrics(own)
    assert f"model saved to runs/{own.name}/model.pt" in result.stdout
