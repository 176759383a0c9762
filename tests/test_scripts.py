"""Both SAC scripts end to end on Hopper-v5: training with gradient updates, logs, save/reload, errors.

The runs are tiny (a few hundred gradient updates); learning quality is measured in benchmarks/.
"""

import math
import re

import pytest
import torch

from tests.conftest import only_run_dir, read_metrics, run_script

SCRIPTS = ["diffsac.py", "baselines/sac.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_trains_logs_saves_and_reloads(script, tmp_path):
    seed = 3
    result = run_script(
        script,
        *("--env-id", "Hopper-v5", "--seed", seed, "--total-timesteps", 1400, "--learning-starts", 1000),
        *("--batch-size", 64, "--eval-frequency", 700, "--eval-episodes", 2, "--save-model"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step 1400/1400" in result.stdout
    run_dir = only_run_dir(tmp_path)
    assert {"args.json", "metrics.jsonl", "model.pt"} <= {p.name for p in run_dir.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = read_metrics(run_dir)

    # 400 gradient updates ran: losses are logged and finite; SAC tunes its temperature, DiffSAC keeps its fixed one
    losses = [row for row in rows if "losses/qf_loss" in row]
    assert losses and all(math.isfinite(row["losses/qf_loss"]) and math.isfinite(row["losses/actor_loss"]) for row in losses)
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    moved = abs(checkpoint["log_alpha"].item() - math.log(checkpoint["args"]["alpha_init"])) > 1e-3
    assert moved == checkpoint["args"]["autotune"] == (script == "baselines/sac.py")
    if script == "diffsac.py":  # the drift network's last layer starts at zero
        assert checkpoint["actor"]["net.6.weight"].abs().sum() > 0
    assert any("charts/episodic_return" in row for row in rows)
    evals = [row for row in rows if "eval/episodic_return" in row]
    assert [row["step"] for row in evals] == [700, 1400]

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


def test_diffsac_logs_the_chain(tmp_path):
    result = run_script(
        "diffsac.py",
        *("--total-timesteps", 1100, "--learning-starts", 1000, "--batch-size", 32, "--diffusion-steps", 3),
        *("--eval-episodes", 1, "--capture-video"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    row = next(row for row in read_metrics(run_dir) if "losses/qf_loss" in row)
    assert {"diffusion/eta_0", "diffusion/eta_2", "diffusion/entropy", "policy/saturated_fraction"} <= row.keys()
    assert "diffusion/eta_3" not in row
    assert row["diffusion/eta_0"] == pytest.approx(0.5, abs=0.01)
    assert list((run_dir / "videos").glob("*.mp4")), "--capture-video wrote no video"


BAD_INPUTS = [
    (["--env-id", "NoSuchEnv-v0"], "cannot make --env-id"),
    (["--env-id", "CartPole-v1"], "only continuous (Box) actions"),
    (["--total-timesteps", 500], "no gradient update would run"),
    (
        ["--env-id", "tests.nan_env:NanRewardHopper-v0", "--total-timesteps", 1100, "--learning-starts", 1000, "--batch-size", 32],
        "qf_loss became nan at env step 1001",
    ),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_exits_with_one_clear_line(script, args, message, tmp_path):
    result = run_script(script, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:") and message in last_line, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--diffusion-steps", 0], "error: --diffusion-steps must be at least 1, got 0"),
        (["--eta-max", 0.4], "error: --eta-max must exceed 0.5, the first step's initial step size, got 0.4"),
        (["--last-step-share", 1.0], "error: --last-step-share must lie strictly between 0 and 1, got 1.0"),
        (["--eta-lr", 0], "error: --eta-lr must be positive, got 0.0"),
    ],
)
def test_diffsac_rejects_bad_chain_settings(args, message, tmp_path):
    result = run_script("diffsac.py", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == message


def test_diffsac_step_sizes_have_their_own_learning_rate(tmp_path):
    """--eta-lr drives eta_k alone: fast eta with a frozen drift, then frozen eta with a fast drift (Adam moves each
    parameter by about its learning rate per update, 200 updates here)."""
    moved = {}
    for name, policy_lr, eta_lr in [("fast_eta", 1e-7, 0.02), ("slow_eta", 0.02, 1e-7)]:
        result = run_script(
            "diffsac.py",
            *("--env-id", "envs.turning_double_well:TurningDoubleWell-v0", "--total-timesteps", 1200, "--learning-starts", 1000),
            *("--batch-size", 32, "--hidden-dim", 32, "--eval-episodes", 1, "--save-model", "--exp-name", name),
            *("--policy-lr", policy_lr, "--eta-lr", eta_lr),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        checkpoint = torch.load(next(tmp_path.glob(f"runs/*{name}*/model.pt")), weights_only=False)
        initial = torch.logit(0.5 * (0.17 + 0.83 * (8 - torch.arange(8.0)) / 8))[:, None]  # eta_k = 0.5 sched(k), eta_max 1
        drift = checkpoint["actor"]["net.6.weight"]  # the drift network's last layer starts at zero
        moved[name] = ((checkpoint["actor"]["eta_param"] - initial).abs().max().item(), drift.abs().max().item())
    assert moved["fast_eta"][0] > 0.3 and moved["fast_eta"][1] < 1e-4
    assert moved["slow_eta"][0] < 1e-3 and moved["slow_eta"][1] > 0.05
