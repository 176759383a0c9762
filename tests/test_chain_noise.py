"""benchmarks/chain_noise.py: on an untrained chain (drift u = 0) the spreads have closed forms."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import chain_noise
from tests.conftest import REPO


@pytest.mark.parametrize("script", ["diffwpo.py", "diffppo.py"])
def test_spreads_of_the_untrained_chain_match_the_closed_form(script):
    module = chain_noise.load_script(REPO / script)
    torch.manual_seed(0)
    prior_std, K = 1.5, 4
    actor = module.DiffusionPolicy(3, 2, 16, K, prior_std, 1.0, True)
    obs = torch.randn(5, 3)
    # u = 0 at init, so x_{k+1} = (1 - eta_k / sigma_p^2) x_k + sqrt(2 eta_k) xi: a linear Gaussian chain
    eta = actor.eta().detach().mean(-1).numpy()
    shrink = 1 - eta / prior_std**2
    prior_only = chain_noise.spread(chain_noise.chain_end(actor, obs, 4000, prior_noise=True, kernel_noise=False))[0]
    assert prior_only == pytest.approx(prior_std * shrink.prod(), rel=0.03)
    for j in range(K):
        alone = chain_noise.spread(chain_noise.chain_end(actor, obs, 4000, prior_noise=False, kernel_noise=False, only_step=j))[0]
        assert alone == pytest.approx(np.sqrt(2 * eta[j]) * shrink[j + 1 :].prod(), rel=0.03)
    # independent noises add in variance
    total = chain_noise.spread(chain_noise.chain_end(actor, obs, 4000))[0]
    variance = (prior_std * shrink.prod()) ** 2 + sum(2 * eta[j] * shrink[j + 1 :].prod() ** 2 for j in range(K))
    assert total == pytest.approx(np.sqrt(variance), rel=0.03)
    # no noise at all: every chain of a state ends at the same point
    assert chain_noise.spread(chain_noise.chain_end(actor, obs, 8, prior_noise=False, kernel_noise=False))[0] == 0


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/chain_noise.py", "--script", "diffwpo.py", "--checkpoint", str(tmp_path / "none.pt")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: --checkpoint {tmp_path / 'none.pt'} is not a file"


@pytest.mark.parametrize("script", ["diffsac.py", "diffppo.py", "da_mdp_reppo.py", "diffwpo.py"])
def test_reads_every_diffusion_script_s_checkpoint(script, tmp_path):
    from tests.test_run_dirs import BUDGETS, ENV

    train = [sys.executable, str(REPO / script), "--env-id", ENV, *map(str, BUDGETS[script]), "--eval-episodes", "1", "--save-model"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    assert subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True).returncode == 0
    (checkpoint,) = tmp_path.glob("runs/*/model.pt")
    command = [sys.executable, str(REPO / "benchmarks/chain_noise.py"), "--script", str(REPO / script), "--checkpoint", str(checkpoint)]
    result = subprocess.run([*command, "--env-steps", "16", "--samples", "4"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(steps) == 2  # K = 2: one row per denoising step
    assert "k-NN estimate" in result.stdout.splitlines()[-1]


def test_nearest_neighbour_entropy_matches_closed_forms():
    torch.manual_seed(0)
    # a Gaussian with covariance diag(0.3^2, 0.1^2, 0.5^2): H = 1/2 log((2 pi e)^3 det)
    scales = torch.tensor([0.3, 0.1, 0.5], dtype=torch.float64)
    gaussian = torch.randn(3000, 3, dtype=torch.float64) * scales
    expected = 0.5 * np.log((2 * np.pi * np.e) ** 3 * (scales**2).prod().item())
    assert chain_noise.knn_entropy(gaussian) == pytest.approx(expected, abs=0.05)
    # uniform on [0, 0.5]^2: H = 2 log 0.5 (the estimate is biased upwards at the support's edges, here by 0.05 nats);
    # scaling by 4 adds 2 log 4
    uniform = 0.5 * torch.rand(3000, 2, dtype=torch.float64)
    assert chain_noise.knn_entropy(uniform) == pytest.approx(2 * np.log(0.5), abs=0.1)
    assert chain_noise.knn_entropy(4 * uniform) - chain_noise.knn_entropy(uniform) == pytest.approx(2 * np.log(4), abs=1e-9)


def test_states_of_random_actions_differ_from_the_policy_s():
    module = chain_noise.load_script(REPO / "diffsac.py")
    torch.manual_seed(0)
    actor = module.DiffusionPolicy(17, 6, 16, 2, 1.0, 1.0, True)
    with torch.no_grad():
        actor.net[-1].bias.fill_(-3.0)  # the policy pushes every coordinate towards -1; random actions do not
    policy_states = chain_noise.visited_states(actor, module, "HalfCheetah-v5", 40, 4, 0)
    random_states = chain_noise.visited_states(actor, module, "HalfCheetah-v5", 40, 4, 0, random_actions=True)
    assert policy_states.shape == random_states.shape == (10, 17)
    assert torch.equal(policy_states[0], random_states[0])  # the same reset
    assert not torch.allclose(policy_states[1:], random_states[1:])
