"""The REPPO / WPO scripts end to end on MuJoCo: rollouts, gradient updates, logs, save/reload, errors.

Training runs use InvertedPendulum-v5, whose episodes end within a few steps under an untrained policy (fast
evaluations); the NaN runs use Hopper-v5. The runs are tiny (two rollouts of 4 envs x 16 steps,
4 gradient updates each); learning quality is measured in benchmarks/, not here. Input errors are checked
in-process through each script's check_args (fast), and once per kind through the command line."""

import math
import re

import pytest
import torch

from tests.conftest import load_script, only_run_dir, read_metrics, run_script

DIFFUSION_SCRIPTS = ["da_mdp_reppo.py", "diffwpo.py"]
SCRIPTS = DIFFUSION_SCRIPTS + ["baselines/reppo.py", "baselines/wpo.py"]
TINY = ("--num-envs", 4, "--num-steps", 16, "--num-minibatches", 2, "--update-epochs", 2)


@pytest.mark.parametrize("script", SCRIPTS)
def test_trains_logs_saves_and_reloads(script, tmp_path):
    seed = 3
    chain = ("--diffusion-steps", 3) if script in DIFFUSION_SCRIPTS else ()
    result = run_script(
        script,
        *("--env-id", "InvertedPendulum-v5", "--seed", seed, "--total-timesteps", 128, *TINY, *chain),
        *("--eval-frequency", 64, "--eval-episodes", 2, "--save-model"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step 128/128" in result.stdout
    model_line = next(line for line in result.stdout.splitlines() if line.startswith("model saved to "))
    run_dir = only_run_dir(tmp_path)
    assert (tmp_path / model_line.split()[3]).resolve() == (run_dir / "model.pt").resolve()
    assert {"args.json", "metrics.jsonl", "model.pt"} <= {p.name for p in run_dir.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = read_metrics(run_dir)

    # two rollouts, 2 epochs x 2 minibatches each: losses logged per rollout and finite, the multipliers moved
    losses = [row for row in rows if "losses/qf_loss" in row]
    assert [row["step"] for row in losses] == [64, 128]
    assert all(math.isfinite(row["losses/qf_loss"]) and math.isfinite(row["losses/actor_loss"]) for row in losses)
    assert all(0 <= row["losses/kl_clip_fraction"] <= 1 and row["losses/kl"] >= 0 for row in losses)
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    assert abs(checkpoint["log_alpha"].item() - math.log(checkpoint["args"]["alpha_init"])) > 1e-4
    assert abs(checkpoint["log_beta"].item() - math.log(0.3)) > 1e-4
    # observation statistics are saved with the policy: the normaliser saw 128 observations
    assert checkpoint["actor"]["obs_norm.count"].item() == pytest.approx(128, abs=0.01)
    assert checkpoint["return_normalizer"]["count"] == pytest.approx(128, abs=0.01)
    if script in DIFFUSION_SCRIPTS:
        assert checkpoint["actor"]["policy.net.6.weight"].abs().sum() > 0  # the drift network's last layer starts at zero
        assert {"losses/alpha", "diffusion/entropy", "diffusion/eta_0", "diffusion/eta_2"} <= losses[0].keys()
        assert "diffusion/eta_3" not in losses[0]
        assert losses[0]["diffusion/eta_0"] == pytest.approx(0.5, abs=0.01)
    else:
        assert {"losses/alpha", "policy/entropy"} <= losses[0].keys()
    assert any("charts/episodic_return" in row for row in rows)
    evals = [row for row in rows if "eval/episodic_return" in row]
    assert [row["step"] for row in evals] == [64, 128]

    training_stdout = result.stdout
    result = run_script(
        script,
        *("--evaluate-checkpoint", run_dir / "model.pt", "--eval-episodes", 2),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # the final evaluation (stochastic sampler) is printed, and the reload reproduces it exactly: same seeds, same noise
    final_line = re.search(r"eval return (-?[\d.]+) \+- [\d.]+ over 2 episodes at env step (\d+)", training_stdout)
    assert final_line and float(final_line.group(1)) == pytest.approx(evals[-1]["eval/episodic_return"], abs=0.01)
    assert re.search(r"eval return .* at env step (\d+)", result.stdout).group(0) == final_line.group(0)

    # benchmarks/multimodal.py's use: load_actor, then sample(raw observations) -> (squashed action, ...)
    actor, saved, _ = load_script(script).load_actor(run_dir / "model.pt", torch.device("cpu"))
    assert saved.env_id == "InvertedPendulum-v5" and saved.num_envs == 4
    action, extra = actor.sample(torch.full((5, 4), 100.0))[:2]
    assert action.shape == (5, 1) and action.abs().max() <= 1
    if script in DIFFUSION_SCRIPTS:
        assert extra.shape == (5, 4, 1) and torch.allclose(action, torch.tanh(extra[:, -1]))  # the chain x_0..x_K, K = 3


BAD_INPUTS = [
    ({"env_id": "NoSuchEnv-v0"}, "cannot make --env-id"),
    ({"env_id": "CartPole-v1"}, "only continuous (Box) actions"),
    ({"total_timesteps": 500}, "no gradient update would run"),
    ({"num_minibatches": 0}, "must be at least 1"),
    ({"kl_bound": 0.0}, "must be positive"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(("fields", "message"), BAD_INPUTS)
def test_check_args_rejects_bad_input(script, fields, message):
    module = load_script(script)
    with pytest.raises(SystemExit) as stop:
        module.check_args(module.Args(**fields))
    assert str(stop.value).startswith("error:") and message in str(stop.value)


@pytest.mark.parametrize("script", DIFFUSION_SCRIPTS)
def test_diffusion_scripts_reject_bad_chain_settings(script):
    module = load_script(script)
    for fields, message in [
        ({"diffusion_steps": 0}, "error: --diffusion-steps must be at least 1, got 0"),
        ({"eta_max": 0.4}, "error: --eta-max must exceed 0.5, the first step's initial step size, got 0.4"),
        ({"eta_lr": 0.0}, "error: --eta-lr must be positive, got 0.0"),
    ]:
        with pytest.raises(SystemExit) as stop:
            module.check_args(module.Args(**fields))
        assert str(stop.value) == message


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("da_mdp_reppo.py", ["--diffusion-steps", 0], "error: --diffusion-steps must be at least 1, got 0"),
        ("baselines/wpo.py", ["--env-id", "CartPole-v1"], "only continuous (Box) actions are supported"),
    ],
)
def test_bad_input_exits_with_one_clear_line(script, args, message, tmp_path):
    result = run_script(script, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_training(script, tmp_path):
    result = run_script(script, "--env-id", "tests.nan_env:NanRewardHopper-v0", "--total-timesteps", 128, *TINY, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: qf_loss became nan at env step 64; stopping"
    assert "step 128/128" not in result.stdout
