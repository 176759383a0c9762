"""The one-step bandits of envs/bandits.py and benchmarks/maxent_bandit.py: pi* on rewards with a known answer, the
masses and the TV distance on hand-made samples, the env checker, and one tiny smoke test of the whole command."""

import json
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from benchmarks.maxent_bandit import (
    basins,
    mass_near,
    max_ent_bins,
    max_ent_density,
    max_ent_mass,
    near_windows,
    total_variation,
)
from envs.bandits import TASKS, bump_reward
from tests.conftest import REPO

ENV_IDS = [f"envs.bandits:{name}" for name in TASKS]


# --- the envs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_passes_the_gymnasium_env_checker(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_has_equal_optima_exactly_at_the_centres(env_id):
    env = gym.make(env_id).unwrapped
    grid = np.linspace(-1, 1, 200_001)
    reward = env.reward(grid)
    assert reward.min() >= 0 and reward.max() <= 1 + 1e-12
    maxima = grid[1:-1][(reward[1:-1] > reward[:-2]) & (reward[1:-1] >= reward[2:])]
    np.testing.assert_allclose(maxima, env.centres, atol=1e-4)  # no other local maximum
    np.testing.assert_allclose(env.reward(env.centres), 1.0, atol=1e-12)  # equal heights, whatever the other bumps' tails
    assert np.abs(np.diff(reward)).max() < 1e-3  # smooth on the grid: no jump


def test_the_three_variants():
    two, three, widths = (TASKS[name] for name in ("BanditTwoUneven-v0", "BanditThreeOptima-v0", "BanditUnequalWidths-v0"))
    assert len(two["centres"]) == 2 and sum(two["centres"]) != 0  # not symmetric about 0
    assert len(three["centres"]) == 3 and 0.0 in three["centres"]
    assert len(set(widths["widths"])) == 2 and len(set(two["widths"])) == len(set(three["widths"])) == 1


def test_the_mirrored_task_is_two_uneven_reflected():
    grid = np.linspace(-1, 1, 2001)
    two, mirrored = (gym.make(f"envs.bandits:{name}").unwrapped for name in ("BanditTwoUneven-v0", "BanditTwoUnevenMirrored-v0"))
    np.testing.assert_allclose(mirrored.reward(grid), two.reward(-grid), atol=1e-12)


def test_one_step_episodes_with_a_constant_observation():
    env = gym.make(ENV_IDS[0])
    first, _ = env.reset(seed=0)
    for action in (-1.0, -0.6, 0.2, 1.0):
        obs, reward, terminated, truncated, _ = env.step(np.array([action], np.float32))
        np.testing.assert_array_equal(obs, first)
        assert terminated and not truncated
        assert reward == pytest.approx(bump_reward(action, TASKS["BanditTwoUneven-v0"]["centres"], TASKS["BanditTwoUneven-v0"]["widths"]))
        obs, _ = env.reset(seed=1)
        np.testing.assert_array_equal(obs, first)
    assert env.step(np.array([-0.6], np.float32))[1] == pytest.approx(1.0)


# --- the analytic optimum -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0])
def test_max_ent_mass_of_a_linear_reward_in_closed_form(alpha):
    """r(a) = a: pi*(a) = exp(a / alpha) / (alpha (e^(1/alpha) - e^(-1/alpha))), so pi*([lo, hi]) is a ratio of exponentials."""
    windows = np.array([[-1.0, 0.0], [0.0, 0.5], [0.5, 1.0]])
    expected = (np.exp(windows[:, 1] / alpha) - np.exp(windows[:, 0] / alpha)) / (np.exp(1 / alpha) - np.exp(-1 / alpha))
    np.testing.assert_allclose(max_ent_mass(lambda a: a, alpha, windows), expected, rtol=1e-6)
    grid, density = max_ent_density(lambda a: a, alpha)
    np.testing.assert_allclose(density, np.exp(grid / alpha) / (alpha * (np.exp(1 / alpha) - np.exp(-1 / alpha))), rtol=1e-6)
    assert max_ent_bins(lambda a: a, alpha, 50).sum() == pytest.approx(1.0)


def test_max_ent_mass_of_a_quadratic_reward_is_a_truncated_gaussian():
    """r(a) = -(a - c)^2 / (2 w^2): pi* = N(c, w^2 alpha) cut to [-1, 1]; its mass within d of c is math.erf(d / (w sqrt(2 alpha)))."""
    c, w, alpha, d = 0.1, 0.3, 0.1, 0.05
    std = w * math.sqrt(alpha)
    inside = 0.5 * (math.erf((1 - c) / (std * math.sqrt(2))) - math.erf((-1 - c) / (std * math.sqrt(2))))  # 1 - 1e-30 or so
    mass = max_ent_mass(lambda a: -np.square(a - c) / (2 * w**2), alpha, [[c - d, c + d]])
    assert mass[0] == pytest.approx(math.erf(d / (std * math.sqrt(2))) / inside, rel=1e-6)


def test_max_ent_masses_of_the_bandits_follow_the_widths_at_low_temperature():
    """Near c_i, r ~ 1 - (a - c_i)^2 / (2 w_i^2), so as alpha -> 0 optimum i gets mass w_i / sum_j w_j."""
    for name, task in TASKS.items():
        env = gym.make(f"envs.bandits:{name}").unwrapped
        windows = near_windows(env.reward, env.centres)
        masses = max_ent_mass(env.reward, 0.01, windows)
        np.testing.assert_allclose(masses, np.array(task["widths"]) / sum(task["widths"]), rtol=0.02)
        assert masses.sum() == pytest.approx(1.0)  # the basins tile [-1, 1]


def test_basins_and_near_windows():
    reward = lambda a: bump_reward(a, [-0.5, 0.5], [0.1, 0.1])  # noqa: E731
    np.testing.assert_allclose(basins(reward, [-0.5, 0.5]), [[-1, 0], [0, 1]], atol=1e-5)  # the minimum is midway
    np.testing.assert_allclose(near_windows(reward, [-0.5, 0.5], near=0.2), [[-0.7, -0.3], [0.3, 0.7]], atol=1e-9)
    np.testing.assert_allclose(near_windows(reward, [-0.5, 0.5], near=0.8), [[-1, 0], [0, 1]], atol=1e-5)  # cut at the basins


# --- the comparison on hand-made samples and histograms -------------------------------------------------


def test_mass_near_counts_the_samples_in_each_window():
    actions = np.array([-1.0, -0.6, -0.2, 0.0, 0.1, 0.5, 0.99, 1.0])
    windows = np.array([[-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(mass_near(actions, windows), [3 / 8, 5 / 8])  # 0 in the right one, both bounds counted
    np.testing.assert_allclose(mass_near(actions, [[-0.7, -0.5], [0.4, 0.6]]), [1 / 8, 1 / 8])
    assert mass_near(actions, windows).sum() == pytest.approx(1.0)


def test_total_variation_of_hand_made_histograms():
    assert total_variation([1, 2, 3], [1, 2, 3]) == 0.0
    assert total_variation([2, 4, 6], [1, 2, 3]) == pytest.approx(0.0)  # counts are normalised first
    assert total_variation([1, 1, 0, 0], [0, 0, 3, 1]) == pytest.approx(1.0)  # disjoint
    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)  # 1/2 (0.5 + 0 + 0.5)
    assert total_variation([0.6, 0.3, 0.1], [0.2, 0.3, 0.5]) == pytest.approx(0.4)  # 1/2 (0.4 + 0 + 0.4)


def test_samples_of_pi_star_are_close_to_it_and_a_uniform_policy_is_not():
    env = gym.make(ENV_IDS[2]).unwrapped
    alpha, bins, rng = 0.1, 50, np.random.default_rng(0)
    grid, density = max_ent_density(env.reward, alpha)
    samples = rng.choice(grid, size=20_000, p=density / density.sum())
    windows = near_windows(env.reward, env.centres)
    np.testing.assert_allclose(mass_near(samples, windows), max_ent_mass(env.reward, alpha, windows), atol=0.01)
    star = max_ent_bins(env.reward, alpha, bins)
    assert total_variation(np.histogram(samples, bins, (-1, 1))[0], star) < 0.05
    assert total_variation(np.histogram(rng.uniform(-1, 1, 20_000), bins, (-1, 1))[0], star) > 0.5


# --- the command ----------------------------------------------------------------------------------------


def run_benchmark(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, str(REPO / "benchmarks/maxent_bandit.py"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--script", "nope.py"], "error: --script must start with one of"),
        (["--script", "diffsac.py --alpha-init 0.3"], "error: --script must not carry --alpha-init"),
        (["--script", "diffsac.py", "--alpha", "-1"], "error: --alpha must be positive"),
        (["--script", "diffsac.py", "--env-id", "Pendulum-v1"], "error: --env-id 'Pendulum-v1' is not a 1-D bandit"),
    ],
)
def test_bad_input_gives_one_error_line(tmp_path, args, message):
    result = run_benchmark(*args, "--runs-dir", tmp_path, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert not (tmp_path / "runs").exists()


def test_smoke_benchmark_trains_diffsac_for_300_env_steps_and_writes_its_summary(tmp_path):
    """Smoke test only: a 300-step DiffSAC run is nowhere near pi*; it checks the command end to end."""
    script = "diffsac.py --learning-starts 100 --batch-size 32 --eval-episodes 1"
    out = tmp_path / "summary"
    result = run_benchmark(
        *("--script", script, "--env-id", ENV_IDS[1], "--alpha", 0.2, "--total-timesteps", 300, "--samples", 2000),
        *("--runs-dir", tmp_path, "--out", out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for suffix in (".png", ".json", ".md"):
        assert out.with_suffix(suffix).is_file()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["env_steps"] == 300 and summary["alpha"] == 0.2 and summary["temperature_flag"] == "--alpha-init"
    assert summary["training_command"].startswith("diffsac.py --env-id") and "--no-autotune --alpha-init 0.2" in summary["training_command"]
    assert len(summary["learned_masses"]) == 3 and sum(summary["learned_masses"]) <= 1 + 1e-9
    (comparison,) = summary["comparisons"]  # DiffSAC normalises no rewards: alpha alone
    assert sum(comparison["masses"]) <= 1 + 1e-9 and 0 <= comparison["tv"] <= 1
    assert "squashed action" in summary["entropy_space"] and "entropy space" in result.stdout
