"""The multimodal benchmark env (docs/method.md, section 5)."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.turning_double_well import HORIZON, double_well_reward, multi_well_reward
from tests.conftest import read_metrics, run_script

DOUBLE_WELL = "envs.turning_double_well:TurningDoubleWell-v0"
MULTI_WELL = "envs.turning_double_well:TurningMultiWell-v0"


@pytest.mark.parametrize("env_id", [DOUBLE_WELL, MULTI_WELL])
def test_passes_the_gymnasium_env_checker(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=True)


def test_double_well_has_two_optima_and_the_value_at_zero():
    grid = np.linspace(-1, 1, 200_001)
    reward = double_well_reward(grid)
    assert reward.max() == pytest.approx(1.0)
    maxima = grid[1:-1][(reward[1:-1] > reward[:-2]) & (reward[1:-1] >= reward[2:])]
    np.testing.assert_allclose(maxima, [-0.5, 0.5], atol=1e-4)  # +-45 degrees
    assert double_well_reward(0.0) == pytest.approx(0.85)
    assert double_well_reward(1.0) == pytest.approx(0.0) and double_well_reward(-1.0) == pytest.approx(0.0)
    np.testing.assert_allclose(reward, reward[::-1])  # symmetric
    # between the optima the reward dips to h: a well on each side, not a plateau
    assert reward[np.abs(grid) < 0.5].min() == pytest.approx(0.85)


@pytest.mark.parametrize("num_wells", [2, 3, 5])
def test_multi_well_has_n_equal_optima(num_wells):
    grid = np.linspace(-1, 1, 200_001)
    reward = multi_well_reward(grid, num_wells)
    maxima = grid[1:-1][(reward[1:-1] > reward[:-2]) & (reward[1:-1] >= reward[2:])]
    np.testing.assert_allclose(maxima, -1 + (2 * np.arange(num_wells) + 1) / num_wells, atol=1e-4)
    assert multi_well_reward(maxima, num_wells) == pytest.approx(np.ones(num_wells), abs=1e-6)
    assert multi_well_reward(np.array([-1.0, 1.0]), num_wells) == pytest.approx([0.0, 0.0])
    centres = -1 + (2 * np.arange(num_wells) + 1) / num_wells
    midpoints = (centres[1:] + centres[:-1]) / 2
    assert multi_well_reward(midpoints, num_wells) == pytest.approx(np.full(num_wells - 1, 0.85), abs=1e-6)


def test_headings_turns_and_horizon():
    env = gym.make(DOUBLE_WELL)
    seen = set()
    for seed in range(64):
        obs, info = env.reset(seed=seed)
        seen.add(info["heading"])
        np.testing.assert_allclose(obs, [np.cos(info["heading"] * np.pi / 4), np.sin(info["heading"] * np.pi / 4)], atol=1e-6)
    assert seen == set(range(8))

    obs, _ = env.reset(seed=0, options={"heading": 2})  # facing +y
    np.testing.assert_allclose(obs, [0.0, 1.0], atol=1e-6)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5], np.float32))  # turn 45 degrees left
    np.testing.assert_allclose(obs, [-np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(info["position"], [-np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert reward == pytest.approx(1.0) and not terminated and not truncated

    steps, truncated = 1, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.array([0.0], np.float32))
        assert not terminated
        steps += 1
    assert steps == HORIZON


def test_diffsac_trains_on_the_task_through_its_env_id_alone(tmp_path):
    result = run_script(
        "diffsac.py",
        *("--env-id", DOUBLE_WELL, "--total-timesteps", 1200, "--learning-starts", 1000, "--batch-size", 32),
        *("--eval-episodes", 1, "--save-model"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_metrics(run_dir)
    assert any("losses/qf_loss" in row for row in rows)
    # horizon 100, reward in [0, 1] per step
    returns = [row["charts/episodic_return"] for row in rows if "charts/episodic_return" in row]
    assert len(returns) == 12 and all(0 <= value <= 100 for value in returns)
    assert [row["charts/episodic_length"] for row in rows if "charts/episodic_length" in row] == [100] * 12


def test_coverage_counts_samples_near_each_optimum():
    from benchmarks.multimodal import coverage

    actions = np.array([[-0.5, -0.35, 0.45, 0.0], [0.69, 0.71, -0.9, 0.5]])  # two headings, four samples each
    np.testing.assert_allclose(coverage(actions, [-0.5, 0.5], 0.2), [[0.5, 0.25], [0.0, 0.5]])


@pytest.mark.parametrize("num_wells", [2, 3])
def test_coverage_bar_passes_the_max_entropy_policy_and_fails_uniform_and_one_mode(num_wells):
    """benchmarks/multimodal.py's bar (1 / 2n per optimum within 0.4 / n) is met by samples of the exact maximum-entropy
    policy pi(a) ~ exp(r(a) / alpha), and missed by a uniform policy and by one that keeps a single mode."""
    from benchmarks.multimodal import coverage
    from envs.turning_double_well import optima

    rng = np.random.default_rng(0)
    grid = np.linspace(-1, 1, 20_001)
    reward = double_well_reward(grid) if num_wells == 2 else multi_well_reward(grid, num_wells)
    centres, near, bar = optima(num_wells), 0.4 / num_wells, 1 / (2 * num_wells)
    max_entropy = np.exp((reward - reward.max()) / 0.05)
    samples = rng.choice(grid, size=(8, 20_000), p=max_entropy / max_entropy.sum())
    assert coverage(samples, centres, near).min() >= bar
    assert coverage(rng.uniform(-1, 1, (8, 20_000)), centres, near).min() < bar
    one_mode = rng.normal(centres[-1], 0.05, (8, 20_000))
    assert coverage(one_mode, centres, near).min() < bar
