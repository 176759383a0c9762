"""The math of diffppo.py and baselines/ppo.py: kernels, DA-MDP bookkeeping, GAE, losses, normalisers (docs/method.md, sections 2-4)."""

import math

import numpy as np
import pytest
import torch

OBS_DIM, ACTION_DIM, HIDDEN, PRIOR_STD = 5, 2, 32, 3.0


def make_policy(diffppo, diffusion_steps=4, randomize=True, tanh_correction=False, seed=0):
    """A policy whose drift network u is non-zero (randomize) or, as initialised, zero."""
    torch.manual_seed(seed)
    policy = diffppo.DiffusionPolicy(OBS_DIM, ACTION_DIM, HIDDEN, diffusion_steps, PRIOR_STD, 1.0, tanh_correction)
    if randomize:
        with torch.no_grad():
            policy.net[-1].weight.normal_(0, 0.3)
            policy.net[-1].bias.normal_(0, 0.3)
            policy.eta_param.add_(0.2 * torch.randn_like(policy.eta_param))
    return policy


def rollout_batch(diffppo, policy, rows=64):
    """One chain per observation, flattened to DA transitions (s, x_k, k, x_{k+1}, log q_old) as diffppo.py stores them."""
    obs = torch.randn(rows, OBS_DIM)
    with torch.no_grad():
        _, chain, log_ratio = policy.sample(obs)
    diffusion_steps = policy.diffusion_steps
    batch = {
        "obs": obs[:, None].expand(-1, diffusion_steps, -1).reshape(-1, OBS_DIM),
        "x": chain[:, :-1].reshape(-1, ACTION_DIM),
        "k": torch.arange(diffusion_steps).repeat(rows),
        "x_next": chain[:, 1:].reshape(-1, ACTION_DIM),
        "advantages": torch.randn(rows * diffusion_steps),
    }
    with torch.no_grad():  # log q_old of every DA step in one kernel call, as the training loop does
        mean, std = policy.kernel(batch["obs"], batch["x"], batch["k"])
        batch["log_prob"] = diffppo.gaussian_log_prob(batch["x_next"], mean, std)
    return batch, chain, log_ratio


def test_chain_log_densities_match_torch_distributions(diffppo):
    policy = make_policy(diffppo)
    batch, chain, log_ratio = rollout_batch(diffppo, policy)
    mean, std = policy.kernel(batch["obs"], batch["x"], batch["k"])
    expected_q = torch.distributions.Normal(mean, std).log_prob(batch["x_next"]).sum(-1)
    torch.testing.assert_close(batch["log_prob"], expected_q, rtol=1e-5, atol=1e-5)
    # reference (noising) kernel p(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k)
    eta = policy.eta()[batch["k"]]
    reverse = torch.distributions.Normal(batch["x_next"] - eta * batch["x_next"] / PRIOR_STD**2, torch.sqrt(2 * eta))
    expected_p = reverse.log_prob(batch["x"]).sum(-1)
    torch.testing.assert_close(log_ratio.reshape(-1), expected_q - expected_p, rtol=1e-4, atol=1e-4)
    # the chain steps with the kernel: x_{k+1} = mean + std * noise, noise of unit scale
    noise = (batch["x_next"] - mean) / std
    assert noise.std().item() == pytest.approx(1.0, rel=0.15)


def test_tanh_correction_only_at_the_last_step(diffppo):
    torch.manual_seed(3)
    obs = torch.randn(32, OBS_DIM)
    plain, corrected = make_policy(diffppo, seed=1), make_policy(diffppo, seed=1, tanh_correction=True)
    torch.manual_seed(4)
    _, chain, plain_l = plain.sample(obs)
    torch.manual_seed(4)
    _, same_chain, corrected_l = corrected.sample(obs)
    assert torch.equal(chain, same_chain)
    difference = corrected_l - plain_l
    assert torch.equal(difference[:, :-1], torch.zeros(32, 3))
    # l_{K-1} gains -sum_d log(1 - tanh(x_K,d)^2): the bonus is of the squashed action
    expected = -torch.log(1 - torch.tanh(chain[:, -1].double()) ** 2).sum(-1)  # in float64: x_K is often saturated
    torch.testing.assert_close(difference[:, -1], expected.float(), rtol=1e-4, atol=1e-4)


def test_initial_chain_keeps_the_prior_and_deterministic_chain_follows_the_mean(diffppo):
    policy = make_policy(diffppo, diffusion_steps=8, randomize=False)
    obs = torch.randn(1, OBS_DIM).repeat(20_000, 1)
    with torch.no_grad():
        action, chain, _ = policy.sample(obs)
    torch.testing.assert_close(action, torch.tanh(chain[:, -1]))
    assert chain[:, 0].std().item() == pytest.approx(PRIOR_STD, rel=0.03)
    assert chain[:, -1].std().item() == pytest.approx(PRIOR_STD, rel=0.05)  # u = 0: an Ornstein-Uhlenbeck chain
    policy = make_policy(diffppo)
    with torch.no_grad():
        _, chain, _ = policy.sample(obs[:3], deterministic=True)
        x = torch.zeros(3, ACTION_DIM)
        for k in range(4):
            x, _ = policy.kernel(obs[:3], x, torch.full((3,), k))
    assert torch.equal(chain[:, 0], torch.zeros(3, ACTION_DIM))
    torch.testing.assert_close(chain[:, -1], x)


def test_da_mdp_sequence_and_gae_by_hand(diffppo):
    # K = 2, three env steps, one env; the episode ends after env step 1 (inside the rollout)
    gamma, gae_lambda, eps = 0.9, 0.8, 0.1
    env_rewards = torch.tensor([[1.0], [2.0], [3.0]])
    env_dones = torch.tensor([[0.0], [1.0], [0.0]])
    log_ratio = torch.tensor([[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]])[:, :, None]  # l[t, k]
    rewards, dones, gammas, lambdas = diffppo.da_mdp_sequence(env_rewards, env_dones, log_ratio, eps, gamma, gae_lambda)
    # DA time j = t*K + k: env reward only at k = K-1, bonus -eps l_k everywhere, discount and trace decay only at k = K-1
    torch.testing.assert_close(rewards[:, 0], torch.tensor([-0.05, 1.1, -0.2, 2.0, -0.1, 2.9]))
    torch.testing.assert_close(dones[:, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(gammas[:, 0], torch.tensor([1.0, 0.9, 1.0, 0.9, 1.0, 0.9]))
    torch.testing.assert_close(lambdas[:, 0], torch.tensor([1.0, 0.8, 1.0, 0.8, 1.0, 0.8]))
    assert torch.equal(log_ratio[:, :, 0], torch.tensor([[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]]))  # input not modified

    values = torch.arange(1.0, 7.0)[:, None]  # V_j = j + 1
    advantages = diffppo.compute_gae(rewards, values, dones, torch.tensor([10.0]), gammas, lambdas)
    # by hand: delta_j = r_j + gamma_j (1 - done_j) V_{j+1} - V_j, A_j = delta_j + gamma_j lambda_j (1 - done_j) A_{j+1}
    #   delta_5 = 2.9 + 0.9 * 10 - 6 = 5.9          A_5 = 5.9
    #   delta_4 = -0.1 + 6 - 5 = 0.9                 A_4 = 0.9 + 5.9 = 6.8           (inside the chain: no decay)
    #   delta_3 = 2 - 4 = -2 (episode ends)          A_3 = -2
    #   delta_2 = -0.2 + 4 - 3 = 0.8                 A_2 = 0.8 - 2 = -1.2
    #   delta_1 = 1.1 + 0.9 * 3 - 2 = 1.8            A_1 = 1.8 + 0.72 * (-1.2) = 0.936
    #   delta_0 = -0.05 + 2 - 1 = 0.95               A_0 = 0.95 + 0.936 = 1.886
    torch.testing.assert_close(advantages[:, 0], torch.tensor([1.886, 0.936, -1.2, -2.0, 6.8, 5.9]))


def test_one_diffusion_step_gae_is_ppo_gae(diffppo, ppo):
    torch.manual_seed(0)
    rewards, values, last_value = torch.randn(50, 3), torch.randn(50, 3), torch.randn(3)
    dones = (torch.rand(50, 3) < 0.1).float()
    da_rewards, da_dones, gammas, lambdas = diffppo.da_mdp_sequence(rewards, dones, torch.zeros(50, 1, 3), 0.1, 0.99, 0.95)
    expected = ppo.compute_gae(rewards, values, dones, last_value, 0.99, 0.95)
    torch.testing.assert_close(diffppo.compute_gae(da_rewards, values, da_dones, last_value, gammas, lambdas), expected)
    # and PPO's GAE is the textbook recursion
    advantage, by_recursion = torch.zeros(3), torch.zeros(50, 3)
    for t in reversed(range(50)):
        next_value = last_value if t == 49 else values[t + 1]
        delta = rewards[t] + 0.99 * (1 - dones[t]) * next_value - values[t]
        advantage = by_recursion[t] = delta + 0.99 * 0.95 * (1 - dones[t]) * advantage
    torch.testing.assert_close(expected, by_recursion)


def test_ratio_is_one_before_the_first_update(diffppo, ppo):
    policy = make_policy(diffppo)
    batch, *_ = rollout_batch(diffppo, policy)
    _, ratio = diffppo.policy_loss(policy, batch, 0.2, True, 2e-4)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)

    actor = ppo.Actor(OBS_DIM, ACTION_DIM, HIDDEN)
    obs = torch.randn(64, OBS_DIM)
    with torch.no_grad():
        _, x, _ = actor.sample(obs)
        log_prob = ppo.gaussian_log_prob(x, *actor.kernel(obs))  # log N(x; mu_old, sigma_old), as the training loop stores it
    _, ratio = ppo.policy_loss(actor, {"obs": obs, "x": x, "log_prob": log_prob, "advantages": torch.randn(64)}, 0.2, True)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_policy_loss_is_the_clipped_surrogate_plus_the_reference_kernel_term(diffppo):
    policy = make_policy(diffppo)
    batch, *_ = rollout_batch(diffppo, policy)
    batch["log_prob"] = batch["log_prob"] + 0.5 * torch.randn_like(batch["log_prob"])  # an older policy: ratio != 1
    eps, clip = 0.3, 0.2
    loss, ratio = diffppo.policy_loss(policy, batch, clip, False, eps)
    mean, std = policy.kernel(batch["obs"], batch["x"], batch["k"])
    log_q = torch.distributions.Normal(mean, std).log_prob(batch["x_next"]).sum(-1)
    torch.testing.assert_close(ratio, (log_q - batch["log_prob"]).exp(), rtol=1e-4, atol=1e-5)
    advantages = batch["advantages"]
    surrogate = torch.min(advantages * ratio, advantages * ratio.clamp(1 - clip, 1 + clip))
    eta = policy.eta()[batch["k"]]
    log_p = torch.distributions.Normal(batch["x_next"] * (1 - eta / PRIOR_STD**2), torch.sqrt(2 * eta)).log_prob(batch["x"]).sum(-1)
    not_clipped = (advantages * ratio <= advantages * ratio.clamp(1 - clip, 1 + clip)).float()
    expected = (-surrogate - ratio.detach() * eps * log_p * not_clipped).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert 0 < not_clipped.mean() < 1  # both kinds of samples are present


def test_reference_kernel_term_ascends_log_p_through_the_step_sizes(diffppo):
    # zero advantages: the loss is -eps mean(log p), whose gradient reaches only eta (p has no network)
    policy = make_policy(diffppo)
    batch, *_ = rollout_batch(diffppo, policy)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    loss, _ = diffppo.policy_loss(policy, batch, 0.2, False, 0.5)
    loss.backward()
    assert policy.net[0].weight.grad is None or policy.net[0].weight.grad.abs().sum() == 0
    grad = policy.eta_param.grad.clone()
    policy.zero_grad()
    # log p(x_k | x_{k+1}) = log N(x_k; x_{k+1} (1 - eta_k / sigma_p^2), 2 eta_k), written out with torch.distributions
    eta = policy.eta()[batch["k"]]
    log_p = torch.distributions.Normal(batch["x_next"] * (1 - eta / PRIOR_STD**2), torch.sqrt(2 * eta)).log_prob(batch["x"]).sum(-1)
    (-0.5 * log_p.mean()).backward()
    torch.testing.assert_close(grad, policy.eta_param.grad, rtol=1e-4, atol=1e-7)
    assert grad.abs().sum() > 0


def test_tanh_term_of_the_last_step_adds_no_gradient_to_the_reference_term(diffppo):
    # log p = log q - l_k: with the tanh correction l_{K-1} also holds -log|tanh'(x_K)|, which has no theta in it
    losses, grads = [], []
    for tanh_correction in (False, True):
        policy = make_policy(diffppo, tanh_correction=tanh_correction)
        torch.manual_seed(7)
        batch, *_ = rollout_batch(diffppo, policy)
        batch["log_prob"] = batch["log_prob"] + 0.5 * torch.randn_like(batch["log_prob"])
        loss, ratio = diffppo.policy_loss(policy, batch, 0.2, False, 0.3)
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    # the loss itself moves by the constant -eps rho log|tanh'(x_K)| of the unclipped last steps
    last = batch["k"] == 3
    log_det = torch.log(1 - torch.tanh(batch["x_next"].double()) ** 2).sum(-1).float()
    advantages = batch["advantages"]
    not_clipped = (advantages * ratio <= advantages * ratio.clamp(0.8, 1.2)).float()
    shift = (-ratio.detach() * 0.3 * log_det * not_clipped * last).mean()
    torch.testing.assert_close(losses[1] - losses[0], shift, rtol=1e-3, atol=1e-5)
    assert shift.abs() > 1e-3


def test_value_loss_clips_around_the_rollout_values(diffppo):
    class Constant(torch.nn.Module):
        def forward(self, obs, x, k):
            return torch.full((len(obs),), 1.0)

    batch = {"obs": torch.zeros(2, OBS_DIM), "x": torch.zeros(2, ACTION_DIM), "k": torch.zeros(2, dtype=torch.long)}
    batch |= {"values": torch.tensor([0.0, 0.95]), "returns": torch.tensor([0.0, 0.0])}
    # row 0: V = 1 moved beyond the clip range 0.2 of V_old = 0: max((1 - 0)^2, (0.2 - 0)^2) = 1; row 1: max(1, 0.95^2) = 1
    assert diffppo.value_loss(Constant(), batch, 0.2, True).item() == pytest.approx(0.5)
    batch["returns"] = torch.tensor([2.0, 2.0])
    # row 0: max((1 - 2)^2, (0.2 - 2)^2) = 3.24; row 1: max(1, (1.0 - 2)^2 = 1) = 1 (1.0 = 0.95 + 0.05, inside the range)
    assert diffppo.value_loss(Constant(), batch, 0.2, True).item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert diffppo.value_loss(Constant(), batch, 0.2, False).item() == pytest.approx(0.5)


def test_running_mean_std_matches_numpy(diffppo):
    rms = diffppo.RunningMeanStd((3,))
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, (n, 3)) for n in (1, 7, 50, 1)]
    for batch in batches:
        rms.update(torch.as_tensor(batch))
    data = np.concatenate(batches)
    # the initial count 1e-4 at mean 0, var 1 shifts the statistics by about 1e-6
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-4)
    assert rms.count.item() == pytest.approx(len(data) + 1e-4)
    normalized = rms.normalize(torch.as_tensor(data))
    assert normalized.dtype == torch.float32
    np.testing.assert_allclose(normalized.numpy(), (data - data.mean(0)) / data.std(0), atol=1e-3)
    assert rms.normalize(torch.full((1, 3), 1e6)).max().item() == 10.0  # clipped like CleanRL's wrapper


def test_agent_samples_on_frozen_normalised_observations(diffppo, ppo):
    # the Agent normalises raw observations with its statistics, which sampling (evaluation) does not update
    for module, fields in ((diffppo, {"diffusion_steps": 4}), (ppo, {})):
        torch.manual_seed(0)
        agent = module.Agent(OBS_DIM, ACTION_DIM, module.Args(hidden_dim=HIDDEN, **fields))
        with torch.no_grad():
            agent.policy.net[-1].weight.normal_(0, 0.3)  # a policy whose output depends on the observation
        agent.obs_rms.update(3 + 2 * torch.randn(50, OBS_DIM))
        before = {name: value.clone() for name, value in agent.obs_rms.state_dict().items()}
        obs = 3 + 2 * torch.randn(4, OBS_DIM)
        with torch.no_grad():
            torch.manual_seed(1)
            action, *rest = agent.sample(obs)
            torch.manual_seed(1)
            expected = agent.policy.sample(((obs - agent.obs_rms.mean) / agent.obs_rms.var.sqrt()).float(), False)
        torch.testing.assert_close(action, expected[0], rtol=1e-4, atol=1e-5)
        assert action.abs().max() <= 1 and not torch.allclose(action, agent.policy.sample(obs)[0])
        for name, value in agent.obs_rms.state_dict().items():
            assert torch.equal(value, before[name]), name


def test_ppo_log_pi_is_the_squashed_gaussian_density(ppo):
    actor = ppo.Actor(OBS_DIM, ACTION_DIM, HIDDEN)
    with torch.no_grad():
        actor.log_std.fill_(math.log(0.7))
    obs = torch.randn(16, OBS_DIM)
    with torch.no_grad():
        action, x, log_pi = actor.sample(obs)
        mean, std = actor.kernel(obs)
    torch.testing.assert_close(action, torch.tanh(x))
    gaussian = torch.distributions.Normal(actor.net(obs), 0.7)
    torch.testing.assert_close(ppo.gaussian_log_prob(x, mean, std), gaussian.log_prob(x).sum(-1))
    squashed = torch.distributions.TransformedDistribution(gaussian, torch.distributions.TanhTransform())
    torch.testing.assert_close(log_pi, squashed.log_prob(torch.tanh(x)).sum(-1), rtol=1e-4, atol=1e-4)
    deterministic, x_mean, _ = actor.sample(obs, deterministic=True)
    torch.testing.assert_close(x_mean, mean)
