"""The math of baselines/sac.py, the Gaussian twin: tanh-Gaussian log-likelihood and the soft target."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

OBS_DIM, ACTION_DIM = 4, 3


def test_tanh_gaussian_log_prob_matches_torch_distributions(sac):
    torch.manual_seed(0)
    actor = sac.Actor(OBS_DIM, ACTION_DIM, 32)
    obs = torch.randn(256, OBS_DIM)
    torch.manual_seed(1)
    action, log_pi = actor.sample(obs)
    mean, log_std = actor.net(obs).chunk(2, -1)
    log_std = sac.LOG_STD_MIN + 0.5 * (sac.LOG_STD_MAX - sac.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
    squashed = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
    # compare away from |a| = 1, where TanhTransform's own log-det loses precision
    inside = action.abs().max(-1).values < 0.999
    expected = squashed.log_prob(action).sum(-1)
    torch.testing.assert_close(log_pi[inside], expected[inside], rtol=1e-4, atol=1e-4)
    assert action.abs().max() <= 1.0


def test_to_env_maps_the_unit_box_to_the_bounds(sac):
    import gymnasium as gym

    space = gym.spaces.Box(low=np.array([-2.0, 0.0], np.float32), high=np.array([2.0, 1.0], np.float32))
    np.testing.assert_allclose(sac.to_env(np.array([-1.0, 1.0]), space), [-2.0, 1.0])
    np.testing.assert_allclose(sac.to_env(np.array([0.0, 0.0]), space), [0.0, 0.5])


class StateValueCritic(torch.nn.Module):
    """A stand-in critic Q(s, a) = s_0 + offset that ignores a."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, obs, action):
        return obs[:, 0] + self.offset


def test_critic_target_on_a_hand_made_batch(sac):
    torch.manual_seed(0)
    actor = sac.Actor(OBS_DIM, ACTION_DIM, 32)
    batch = {
        "obs": torch.zeros(3, OBS_DIM),
        "next_obs": torch.tensor([1.0, 2.0, 3.0])[:, None].repeat(1, OBS_DIM),
        "actions": torch.zeros(3, ACTION_DIM),
        "rewards": torch.tensor([1.0, -1.0, 0.5]),
        "terminated": torch.tensor([0.0, 1.0, 0.0]),
    }
    gamma, alpha = 0.9, 0.3
    torch.manual_seed(5)
    next_action, next_log_pi = actor.sample(batch["next_obs"])
    y = sac.critic_target(batch, next_action, next_log_pi, StateValueCritic(0.0), StateValueCritic(2.0), 0.0, gamma)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 1.0, -1.0, 0.5 + 0.9 * 3.0]))
    y_soft = sac.critic_target(batch, next_action, next_log_pi, StateValueCritic(0.0), StateValueCritic(2.0), alpha, gamma)
    expected = y - gamma * (1 - batch["terminated"]) * alpha * next_log_pi
    torch.testing.assert_close(y_soft, expected)


def test_actor_loss_is_alpha_log_pi_minus_the_smaller_q(sac):
    actor = sac.Actor(OBS_DIM, ACTION_DIM, 32)
    batch = {"obs": torch.randn(8, OBS_DIM)}
    torch.manual_seed(2)
    loss, log_pi = sac.actor_loss(batch, actor, StateValueCritic(0.0), StateValueCritic(-1.0), 0.3)
    torch.manual_seed(2)
    _, expected_log_pi = actor.sample(batch["obs"])
    torch.testing.assert_close(log_pi, expected_log_pi)
    torch.testing.assert_close(loss, (0.3 * expected_log_pi - (batch["obs"][:, 0] - 1.0)).mean())


@pytest.mark.parametrize("deterministic", [False, True])
def test_actor_sample_shapes_and_determinism(sac, deterministic):
    actor = sac.Actor(OBS_DIM, ACTION_DIM, 32)
    obs = torch.randn(5, OBS_DIM)
    first, _ = actor.sample(obs, deterministic)
    second, _ = actor.sample(obs, deterministic)
    assert first.shape == (5, ACTION_DIM)
    assert torch.equal(first, second) == deterministic
