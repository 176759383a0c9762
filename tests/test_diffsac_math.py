"""The math of diffsac.py: kernels, log ratio, chain, DA-MDP targets (docs/method.md, sections 2-4)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

OBS_DIM, ACTION_DIM, HIDDEN, PRIOR_STD = 5, 2, 32, 3.0


def make_policy(diffsac, diffusion_steps=4, randomize=True, seed=0, tanh_correction=False, eta_max=1.0):
    """A policy whose drift network u is non-zero (randomize) or, as initialised, zero."""
    torch.manual_seed(seed)
    policy = diffsac.DiffusionPolicy(OBS_DIM, ACTION_DIM, HIDDEN, diffusion_steps, PRIOR_STD, eta_max, tanh_correction)
    if randomize:
        with torch.no_grad():
            policy.net[-1].weight.normal_(0, 0.3)
            policy.net[-1].bias.normal_(0, 0.3)
            policy.eta_param.add_(0.2 * torch.randn_like(policy.eta_param))
    return policy


def test_step_sizes_follow_the_reference_schedule(diffsac):
    policy = make_policy(diffsac, diffusion_steps=8, randomize=False)
    eta = policy.eta().detach()
    assert eta.shape == (8, ACTION_DIM)
    expected = torch.tensor([0.5 * (0.17 + 0.83 * (8 - k) / 8) for k in range(8)])
    torch.testing.assert_close(eta[:, 0], expected)
    assert eta[0, 0].item() == pytest.approx(0.5)
    # the last step's kernel std sqrt(2 eta_{K-1}) is about 0.52 at K = 8 (docs/method.md, section 7)
    assert math.sqrt(2 * eta[-1, 0].item()) == pytest.approx(0.523, abs=1e-3)


def test_step_sizes_stay_below_eta_max(diffsac):
    policy = make_policy(diffsac, randomize=False, eta_max=2.0)
    torch.testing.assert_close(policy.eta()[0, 0], torch.tensor(0.5))  # the same initial schedule
    with torch.no_grad():
        policy.eta_param.fill_(50.0)
    assert policy.eta().max().item() <= 2.0


def test_kernel_mean_and_std_match_the_formula(diffsac):
    policy = make_policy(diffsac)
    obs, x, k = torch.randn(7, OBS_DIM), torch.randn(7, ACTION_DIM), torch.randint(4, (7,))
    mean, std = policy.kernel(obs, x, k)
    u = policy.net(torch.cat([obs, x, torch.nn.functional.one_hot(k, 4).float()], -1))
    eta = 1.0 * torch.sigmoid(policy.eta_param)[k]  # eta_max * sigmoid
    torch.testing.assert_close(mean, x + eta * (-x / PRIOR_STD**2 + u))
    torch.testing.assert_close(std, torch.sqrt(2 * eta))


def test_log_ratio_equals_difference_of_gaussian_log_densities(diffsac):
    policy = make_policy(diffsac)
    obs, x, k = torch.randn(64, OBS_DIM), 2 * torch.randn(64, ACTION_DIM), torch.randint(4, (64,))
    x_next, l_k = policy.step(obs, x, k)
    mean, std = policy.kernel(obs, x, k)
    eta = policy.eta()[k]
    log_q = torch.distributions.Normal(mean, std).log_prob(x_next).sum(-1)
    # reference (noising) kernel p(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k)
    log_p = torch.distributions.Normal(x_next - eta * x_next / PRIOR_STD**2, torch.sqrt(2 * eta)).log_prob(x).sum(-1)
    torch.testing.assert_close(l_k, log_q - log_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy.log_ratio(x, k, x_next, mean, std), log_q - log_p, rtol=1e-5, atol=1e-5)


def test_tanh_correction_only_at_the_last_step(diffsac):
    plain, corrected = make_policy(diffsac), make_policy(diffsac, tanh_correction=True)
    obs, x, x_next = torch.randn(64, OBS_DIM), torch.randn(64, ACTION_DIM), 2 * torch.randn(64, ACTION_DIM)
    k = torch.arange(64) % 4
    mean, std = plain.kernel(obs, x, k)
    difference = corrected.log_ratio(x, k, x_next, mean, std) - plain.log_ratio(x, k, x_next, mean, std)
    # l_{K-1} gains -log|d tanh(x_K)/dx_K| = -sum_d log(1 - tanh(x_K,d)^2): log pi of the squashed action
    expected = -torch.log(1 - torch.tanh(x_next) ** 2).sum(-1)
    torch.testing.assert_close(difference[k == 3], expected[k == 3], rtol=1e-4, atol=1e-4)
    assert torch.equal(difference[k < 3], torch.zeros(48))
    assert (difference[k == 3] > 0).all()  # saturation is paid for


def test_step_is_reparameterised_through_the_network_and_step_sizes(diffsac):
    policy = make_policy(diffsac)
    x_next, l_k = policy.step(torch.randn(8, OBS_DIM), torch.randn(8, ACTION_DIM), torch.randint(4, (8,)))
    (x_next.sum() + l_k.sum()).backward()
    assert policy.net[0].weight.grad.abs().sum() > 0
    assert policy.eta_param.grad.abs().sum() > 0


def test_initial_chain_keeps_the_prior_and_resamples_x0(diffsac):
    policy = make_policy(diffsac, diffusion_steps=8, randomize=False)
    obs = torch.randn(1, OBS_DIM).repeat(20_000, 1)
    with torch.no_grad():
        action, chain, _ = policy.sample(obs)
        _, chain_again, _ = policy.sample(obs)
    assert chain.shape == (20_000, 9, ACTION_DIM)
    torch.testing.assert_close(action, torch.tanh(chain[:, -1]))
    # x_0 ~ N(0, 9) afresh on every call, for the same state
    assert chain[:, 0].std().item() == pytest.approx(PRIOR_STD, rel=0.03)
    assert abs(np.corrcoef(chain[:, 0, 0], chain_again[:, 0, 0])[0, 1]) < 0.05
    # u = 0 at initialisation: an Ornstein-Uhlenbeck chain that keeps x ~ N(0, sigma_p^2)
    assert chain[:, -1].mean().abs().item() < 0.1
    assert chain[:, -1].std().item() == pytest.approx(PRIOR_STD, rel=0.05)


def test_deterministic_chain_starts_at_zero_and_follows_the_kernel_mean(diffsac):
    policy = make_policy(diffsac)
    obs = torch.randn(3, OBS_DIM)
    with torch.no_grad():
        action, chain, _ = policy.sample(obs, deterministic=True)
        x = torch.zeros(3, ACTION_DIM)
        for k in range(4):
            x, _ = policy.kernel(obs, x, torch.full((3,), k))
    assert torch.equal(chain[:, 0], torch.zeros(3, ACTION_DIM))
    torch.testing.assert_close(chain[:, -1], x)
    torch.testing.assert_close(action, torch.tanh(x))


def test_acting_without_log_ratios_draws_the_same_chain(diffsac):
    """with_log_ratios=False (acting, evaluation) skips the l_k only: same seed, same action and chain, None for the l_k."""
    policy = make_policy(diffsac)
    obs = torch.randn(5, OBS_DIM)
    with torch.no_grad():
        torch.manual_seed(3)
        action, chain, log_ratios = policy.sample(obs)
        torch.manual_seed(3)
        action_fast, chain_fast, none = policy.sample(obs, with_log_ratios=False)
    assert log_ratios.shape == (5, 4) and none is None
    assert torch.equal(action, action_fast) and torch.equal(chain, chain_fast)


class StepValueCritic(torch.nn.Module):
    """A stand-in critic Q(s, a, k) = 100 k + s_0 + offset that ignores a, so targets are known by hand."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, obs, action, k):
        return 100.0 * k + obs[:, 0] + self.offset


def hand_batch(rows=4):
    """Four env transitions (s, a, r, s', terminated); row 1 is terminated."""
    return {
        "obs": torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, OBS_DIM),
        "next_obs": 10 + torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, OBS_DIM),
        "actions": torch.rand(rows, ACTION_DIM) * 2 - 1,
        "rewards": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "terminated": torch.tensor([0.0, 1.0, 0.0, 0.0]),
    }


def current_chain(policy, batch):
    with torch.no_grad():
        return policy.sample(batch["next_obs"])


def test_sample_returns_the_log_ratio_of_every_step(diffsac):
    policy = make_policy(diffsac, tanh_correction=True)
    obs = torch.randn(6, OBS_DIM)
    torch.manual_seed(3)
    action, chain, log_ratios = policy.sample(obs)
    assert chain.shape == (6, 5, ACTION_DIM) and log_ratios.shape == (6, 4)
    for k in range(4):
        step = torch.full((6,), k)
        mean, std = policy.kernel(obs, chain[:, k], step)
        torch.testing.assert_close(log_ratios[:, k], policy.log_ratio(chain[:, k], step, chain[:, k + 1], mean, std))
    torch.testing.assert_close(action, torch.tanh(chain[:, -1]))


def test_critic_target_reward_and_discount_only_at_the_last_step(diffsac):
    diffusion_steps, gamma = 4, 0.9
    policy = make_policy(diffsac, diffusion_steps)
    k = torch.tensor([3, 3, 0, 1])  # two env steps (one terminated), two in-chain steps
    batch = hand_batch()
    _, chain, log_ratios = current_chain(policy, batch)
    y = diffsac.critic_target(batch, k, chain, log_ratios, policy, StepValueCritic(0.0), StepValueCritic(1.0), 0.0, gamma)
    # k = K-1: r + gamma (1 - terminated) min_i Qbar_i(s', a', K-1)
    assert y[0].item() == pytest.approx(1.0 + gamma * (100.0 * (diffusion_steps - 1) + 10.0))
    assert y[1].item() == pytest.approx(2.0)
    # k < K-1: no reward, no discount, the env-step critic at the chain's own end x'_K at s'
    torch.testing.assert_close(y[2:], 100.0 * (diffusion_steps - 1) + batch["next_obs"][2:, 0])


def test_critic_target_entropy_term_sums_the_remaining_log_ratios(diffsac):
    diffusion_steps, gamma, alpha = 4, 0.9, 0.5
    policy = make_policy(diffsac, diffusion_steps)
    k = torch.tensor([3, 3, 0, 1])
    batch = hand_batch()
    _, chain, log_ratios = current_chain(policy, batch)
    critic = StepValueCritic(0.0)
    y = diffsac.critic_target(batch, k, chain, log_ratios, policy, critic, critic, alpha, gamma)
    y_no_entropy = diffsac.critic_target(batch, k, chain, log_ratios, policy, critic, critic, 0.0, gamma)
    prior_entropy = torch.distributions.Normal(0.0, policy.prior_std).entropy() * ACTION_DIM
    # the env step: the bound H_hat' = H_prior - sum_j l'_j of the whole chain at s'; in the chain: the l'_j after k
    expected = torch.stack(
        [-gamma * alpha * (log_ratios[0].sum() - prior_entropy), -alpha * log_ratios[2, 1:].sum(), -alpha * log_ratios[3, 2:].sum()]
    )
    torch.testing.assert_close((y - y_no_entropy)[[0, 2, 3]], expected, atol=1e-4, rtol=1e-5)
    assert (y - y_no_entropy)[1].item() == 0.0  # terminated: nothing after the env step


def test_prior_entropy_is_the_entropy_of_the_prior(diffsac):
    policy = make_policy(diffsac)
    expected = torch.distributions.Normal(torch.zeros(ACTION_DIM), policy.prior_std).entropy().sum()
    assert policy.prior_entropy() == pytest.approx(expected.item())


def test_actor_loss_is_one_reparameterised_kernel_step_from_the_current_chain(diffsac):
    policy = make_policy(diffsac)
    critic = diffsac.SoftQNetwork(OBS_DIM, ACTION_DIM, HIDDEN, 4)
    k = torch.randint(4, (16,))
    batch = {"next_obs": torch.randn(16, OBS_DIM)}
    chain = torch.randn(16, 5, ACTION_DIM)
    alpha = 0.2
    torch.manual_seed(1)
    loss = diffsac.actor_loss(batch, k, chain, policy, critic, critic, alpha)
    loss.backward()
    assert policy.net[0].weight.grad.abs().sum() > 0
    # E[alpha l_k - Q(s', tanh(x_{k+1}), k)] with x_{k+1} ~ q(.|x'_k, s', k) from the chain's own x'_k
    torch.manual_seed(1)
    x_next, expected_l = policy.step(batch["next_obs"], chain[torch.arange(16), k], k)
    torch.testing.assert_close(loss, (alpha * expected_l - critic(batch["next_obs"], torch.tanh(x_next), k)).mean())


def test_critic_loss_scores_the_replayed_action_at_the_env_step_and_the_chain_inside_it(diffsac):
    diffusion_steps, gamma = 4, 0.9
    policy = make_policy(diffsac, diffusion_steps)
    k = torch.tensor([3, 3, 0, 1])
    batch = hand_batch()
    _, chain, log_ratios = current_chain(policy, batch)

    class RecordingCritic(StepValueCritic):
        def forward(self, obs, action, k):
            self.inputs = (obs, action, k)
            return super().forward(obs, action, k)

    qf1, qf2 = RecordingCritic(5.0), RecordingCritic(7.0)
    targets = StepValueCritic(0.0), StepValueCritic(0.0)
    loss, qf1_values = diffsac.critic_loss(batch, k, chain, log_ratios, policy, qf1, qf2, *targets, 0.0, gamma)
    obs, action, step = qf1.inputs
    # the env step scores the replayed (s, a); an in-chain step scores the current chain's (s', tanh(x'_{k+1}))
    torch.testing.assert_close(obs, torch.cat([batch["obs"][:2], batch["next_obs"][2:]]))
    torch.testing.assert_close(action[:2], batch["actions"][:2])
    torch.testing.assert_close(action[2:], torch.tanh(chain[[2, 3], k[2:] + 1]))
    assert torch.equal(step, k)
    y = diffsac.critic_target(batch, k, chain, log_ratios, policy, *targets, 0.0, gamma)
    expected = ((qf1_values - y) ** 2).mean() + ((qf1_values + 2.0 - y) ** 2).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(("diffusion_steps", "share"), [(8, 0.5), (4, 0.1), (1, 0.5)])
def test_sample_steps_frequencies(diffsac, diffusion_steps, share):
    torch.manual_seed(0)
    k = diffsac.sample_steps(200_000, diffusion_steps, share, "cpu")
    frequency = torch.bincount(k, minlength=diffusion_steps).float() / len(k)
    last_share = 1.0 if diffusion_steps == 1 else share
    expected = torch.full((diffusion_steps,), (1 - last_share) / max(diffusion_steps - 1, 1))
    expected[-1] = last_share
    torch.testing.assert_close(frequency, expected, atol=0.005, rtol=0)


@pytest.mark.parametrize(("entropy", "direction"), [(-10.0, -1), (-20.0, 1)])
def test_temperature_falls_above_the_entropy_target_and_rises_below(diffsac, entropy, direction):
    log_alpha = torch.tensor(np.log(0.1), requires_grad=True)
    diffsac.temperature_loss(log_alpha, torch.tensor(entropy), -15.0).backward()
    # gradient descent moves log alpha against its gradient
    assert np.sign(-log_alpha.grad.item()) == direction


def test_replay_buffer_stores_env_transitions_and_wraps(diffsac):
    buffer = diffsac.ReplayBuffer(5, OBS_DIM, (ACTION_DIM,), torch.device("cpu"))
    for step in range(7):
        action = np.full((1, ACTION_DIM), step, np.float32)
        buffer.add(np.full((1, OBS_DIM), step), np.full((1, OBS_DIM), step + 1), action, [step], [step % 2])
    assert buffer.full and buffer.pos == 2
    assert sorted(buffer.rewards.tolist()) == [2, 3, 4, 5, 6]
    batch = buffer.sample(32)
    assert set(batch) == {"obs", "next_obs", "actions", "rewards", "terminated"}  # no chain: only the env's action
    torch.testing.assert_close(batch["actions"][:, 0], batch["rewards"])
    torch.testing.assert_close(batch["next_obs"][:, 0], batch["rewards"] + 1)


def test_real_next_obs_under_same_step_autoreset(diffsac):
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=3)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    envs.reset(seed=0)
    for _ in range(3):
        next_obs, _, terminated, truncated, infos = envs.step(np.zeros((1, 1), np.float32))
        real = diffsac.real_next_obs(next_obs, infos)
        if not truncated[0]:
            np.testing.assert_array_equal(real, next_obs)
    # the third step truncates: next_obs is the reset observation, the true last one comes from final_obs
    assert truncated[0] and not terminated[0]
    np.testing.assert_array_equal(real[0], infos["final_obs"][0])
    assert not np.allclose(real[0], next_obs[0])


def test_an_update_runs_the_policy_k_times_without_gradient_and_once_with(diffsac):
    """The cost of the DA-MDP update: one chain at s' (K kernel steps, no gradient) and one reparameterised step."""
    diffusion_steps = 4
    policy = make_policy(diffsac, diffusion_steps)
    calls = []
    policy.net.register_forward_hook(lambda module, inputs, output: calls.append(torch.is_grad_enabled()))
    batch, k = hand_batch(), torch.tensor([3, 3, 0, 1])
    critic = diffsac.SoftQNetwork(OBS_DIM, ACTION_DIM, HIDDEN, diffusion_steps)
    _, chain, log_ratios = current_chain(policy, batch)
    diffsac.critic_loss(batch, k, chain, log_ratios, policy, critic, critic, critic, critic, 0.1, 0.9)
    diffsac.actor_loss(batch, k, chain, policy, critic, critic, 0.1)
    assert calls == [False] * diffusion_steps + [True]
