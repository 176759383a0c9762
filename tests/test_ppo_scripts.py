"""Both PPO scripts end to end on Hopper-v5: rollouts, several updates, logs, save/reload with the normaliser, errors.

The runs are tiny (two rollouts of a few hundred env steps, a few dozen gradient updates); learning
quality is measured in benchmarks/.
"""

import math
import re

import pytest
import torch

from tests.conftest import load_script, only_run_dir, read_metrics, run_script

SCRIPTS = ["diffppo.py", "baselines/ppo.py"]
TINY = ("--num-steps", 256, "--num-minibatches", 4, "--update-epochs", 2)


@pytest.mark.parametrize("script", SCRIPTS)
def test_trains_logs_saves_and_reloads_with_the_normaliser(script, tmp_path):
    seed = 3
    # 600 steps: a rollout of 256, then one of 256 + the 88 left over; 2 x 2 epochs x 4 minibatches = 16 updates
    chain = ("--diffusion-steps", 4, "--capture-video") if script == "diffppo.py" else ()
    result = run_script(
        script,
        *("--env-id", "Hopper-v5", "--seed", seed, "--total-timesteps", 600, *TINY, *chain),
        *("--eval-frequency", 256, "--eval-episodes", 2, "--save-model"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step 600/600" in result.stdout
    run_dir = only_run_dir(tmp_path)
    assert {"args.json", "metrics.jsonl", "model.pt"} <= {p.name for p in run_dir.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = read_metrics(run_dir)

    updates = [row for row in rows if "losses/value_loss" in row]
    assert [row["step"] for row in updates] == [256, 600]
    assert all(math.isfinite(row["losses/value_loss"]) and math.isfinite(row["losses/policy_loss"]) for row in updates)
    assert updates[0]["charts/learning_rate"] == pytest.approx(3e-4) and updates[1]["charts/learning_rate"] == pytest.approx(1.5e-4)
    assert all(row["losses/approx_kl"] > 0 for row in updates)  # the policy moved
    assert any("charts/episodic_return" in row for row in rows)
    evals = [row for row in rows if "eval/episodic_return" in row]
    assert [row["step"] for row in evals] == [256, 600]

    # the observation statistics of all 600 env steps are saved with the actor and restored by load_actor
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    assert checkpoint["actor"]["obs_rms.count"].item() == pytest.approx(600, abs=0.01)
    assert checkpoint["reward_rms"]["count"].item() == pytest.approx(600, abs=0.01)
    actor, saved, _ = load_script(script).load_actor(run_dir / "model.pt", torch.device("cpu"))
    assert saved.total_timesteps == 600
    assert actor.obs_rms.mean.abs().sum() > 0
    for name in ("mean", "var", "count"):
        assert torch.equal(getattr(actor.obs_rms, name), checkpoint["actor"][f"obs_rms.{name}"])
    if script == "diffppo.py":
        assert checkpoint["actor"]["policy.net.4.weight"].abs().sum() > 0  # the drift network's last layer starts at zero
        logged = {f"diffusion/eta_{k}" for k in range(4)} | {"policy/eps", "diffusion/entropy", "policy/saturated_fraction"}
        assert logged <= updates[0].keys() and "diffusion/eta_4" not in updates[0]
        assert updates[0]["policy/eps"] == 2e-4
        # the first rollout samples the untrained chain (u = 0, the same at every state): its bound H_prior - sum_k l_k
        policy = load_script(script).DiffusionPolicy(11, 3, 64, 4, 1.0, 1.0, True)
        with torch.no_grad():
            _, _, log_ratios = policy.sample(torch.zeros(20_000, 11))
        expected = policy.prior_entropy() - log_ratios.sum(-1).mean().item()
        assert updates[0]["diffusion/entropy"] == pytest.approx(expected, abs=0.5)  # 256 env steps of sampling noise
        assert list((run_dir / "videos").glob("*.mp4")), "--capture-video wrote no video"

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


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_with_the_step(script, tmp_path):
    result = run_script(
        script,
        *("--env-id", "tests.nan_env:NanRewardHopper-v0", "--total-timesteps", 128, "--num-steps", 64, "--num-minibatches", 2),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # one line, non-zero exit, at the first update: the NaN rewards reach the loss through the advantages
    assert result.stderr.strip().splitlines()[-1] == "error: loss became nan at env step 64; stopping"


BAD_INPUTS = [
    ({"env_id": "NoSuchEnv-v0"}, "error: cannot make --env-id 'NoSuchEnv-v0'"),
    ({"env_id": "CartPole-v1"}, "only continuous (Box) actions are supported"),
    ({"total_timesteps": 1000}, "error: --total-timesteps must cover one rollout of 2048 env steps, got 1000"),
    ({"num_minibatches": 1500}, "error: --num-minibatches must be at most half the rollout's 2048 env steps, got 1500"),
    ({"critic_hidden_dim": 0}, "error: --critic-hidden-dim must be at least 1, got 0"),
    ({"num_steps": 0}, "error: --num-steps must be at least 1, got 0"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(("fields", "message"), BAD_INPUTS)
def test_check_args_rejects_bad_input(script, fields, message):
    module = load_script(script)
    with pytest.raises(SystemExit) as error:
        module.check_args(module.Args(**fields))
    assert str(error.value).startswith("error:") and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"diffusion_steps": 0}, "error: --diffusion-steps must be at least 1, got 0"),
        ({"eta_max": 0.4}, "error: --eta-max must exceed 0.5, the first step's initial step size, got 0.4"),
        ({"eta_lr": -1e-3}, "error: --eta-lr must be positive, got -0.001"),
    ],
)
def test_diffppo_rejects_bad_chain_settings(fields, message):
    module = load_script("diffppo.py")
    with pytest.raises(SystemExit, match=re.escape(message)):
        module.check_args(module.Args(**fields))
