"""The math of REPPO / WPO and their DA-MDP versions, checked against hand computations and torch.distributions.

HL-Gauss projection, soft TD(lambda) on a hand-computed DA rollout, the closed-form Gaussian KL, the per-sample
trust region, the WPO actor gradient where it is known in closed form, and the running normalisers.
"""

import ast
import math

import numpy as np
import pytest
import torch

from tests.conftest import REPO, load_script


def test_hl_gauss_mean_matches_the_target_away_from_the_edges(reppo):
    edges = torch.linspace(-10, 10, 152)
    centres = (edges[1:] + edges[:-1]) / 2
    targets = torch.tensor([-7.3, -1.0, 0.0, 0.05, 2.5, 8.9])
    probs = reppo.hl_gauss(targets, edges)
    assert probs.shape == (6, 151)
    assert torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-5)
    assert (probs >= 0).all()
    assert torch.allclose(probs @ centres, targets, atol=1e-3)
    # the std of the projected distribution is about 0.75 bin widths (plus the bin's own width)
    std = torch.sqrt(probs @ centres**2 - (probs @ centres) ** 2)
    width = 20 / 151
    assert torch.allclose(std, torch.full_like(std, math.sqrt((0.75 * width) ** 2 + width**2 / 12)), rtol=0.02)
    # beyond the support the target is clipped: all mass in the last bins, mean just inside the edge
    outside = reppo.hl_gauss(torch.tensor([25.0, -40.0]), edges) @ centres
    assert outside[0] == pytest.approx(10 - 0.1, abs=0.1) and outside[1] == pytest.approx(-10 + 0.1, abs=0.1)


def test_critic_learns_a_target_by_cross_entropy(reppo):
    """The categorical critic's expected value moves to the target under its cross-entropy loss."""
    torch.manual_seed(0)
    qf = reppo.SoftQNetwork(3, 2, 32, 51, 5.0)
    optimizer = torch.optim.Adam(qf.parameters(), lr=1e-2)
    batch = {"obs": torch.randn(64, 3), "x": torch.randn(64, 2)}
    batch["targets"] = batch["obs"][:, 0] + 0.5 * torch.tanh(batch["x"][:, 1])
    for _ in range(200):
        loss, _ = reppo.critic_loss(batch, qf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q = qf(batch["obs"], torch.tanh(batch["x"]))
    assert (q - batch["targets"]).abs().mean() < 0.1


def test_da_td_lambda_on_a_hand_computed_rollout(da_reppo):
    """T = 3 env steps, one env, K = 2: in-chain steps add -alpha l and never discount; only the env step bootstraps."""
    alpha, gamma, lam, h = 0.1, 0.9, 0.8, 2.0
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    log_ratios = torch.tensor([[[0.5, -0.2]], [[0.3, 0.1]], [[-0.4, 0.6]]])  # l_{k,t}: (T, N, K)
    next_q = torch.tensor([[4.0], [5.0], [6.0]])  # Q(s'_t, x'_1, 0)
    next_l = torch.tensor([[0.2], [-0.1], [0.7]])  # l'_0 of the fresh first step at s'_t
    terminated = torch.zeros(3, 1)
    truncated = torch.zeros(3, 1, dtype=torch.bool)
    targets = da_reppo.td_lambda_targets(rewards, next_q, next_l, log_ratios, terminated, truncated, alpha, gamma, lam, h)

    # by hand, backwards: the rollout's last env step bootstraps fully
    g2_last = 3.0 + 0.9 * (6.0 + 0.1 * (2.0 - 0.7))  # 8.517
    g2_first = g2_last - 0.1 * 0.6  # G_{0,2} = G_{1,2} - alpha l_{1,2}
    g1_last = 2.0 + 0.9 * (0.1 * (2.0 + 0.1) + 0.8 * g2_first + 0.2 * 5.0)
    g1_first = g1_last - 0.1 * 0.1
    g0_last = 1.0 + 0.9 * (0.1 * (2.0 - 0.2) + 0.8 * g1_first + 0.2 * 4.0)
    g0_first = g0_last - 0.1 * (-0.2)
    expected = torch.tensor([[[g0_first, g0_last]], [[g1_first, g1_last]], [[g2_first, g2_last]]])
    assert g2_last == pytest.approx(8.517)
    assert torch.allclose(targets, expected, atol=1e-5)

    # termination at t = 1: no bootstrap and no entropy of a next state; truncation at t = 0: bootstrap fully
    terminated[1] = 1.0
    truncated[0] = True
    targets = da_reppo.td_lambda_targets(rewards, next_q, next_l, log_ratios, terminated, truncated, alpha, gamma, lam, h)
    assert targets[1, 0, 1] == pytest.approx(2.0) and targets[1, 0, 0] == pytest.approx(2.0 - 0.1 * 0.1)
    assert targets[0, 0, 1] == pytest.approx(1.0 + 0.9 * (4.0 + 0.1 * (2.0 - 0.2)))


def test_gaussian_td_lambda_is_the_da_one_with_a_single_step(reppo, da_reppo):
    """With K = 1 and no prior entropy the DA-MDP is the env MDP, and both TD(lambda) functions agree."""
    torch.manual_seed(0)
    shape = (7, 3)
    rewards, next_q, next_l = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    terminated = (torch.rand(shape) < 0.2).float()
    truncated = (torch.rand(shape) < 0.2) & (terminated == 0)
    args = (terminated, truncated, 0.2, 0.99, 0.95)
    gaussian = reppo.td_lambda_targets(rewards, next_q, next_l, *args)
    da = da_reppo.td_lambda_targets(rewards, next_q, next_l, torch.randn(*shape, 1), *args, 0.0)
    assert torch.allclose(gaussian, da[..., 0], atol=1e-6)


def test_closed_form_kl_matches_torch_and_monte_carlo(reppo):
    torch.manual_seed(0)
    mean_old, std_old = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, 1.2, 0.8])
    mean, std = torch.tensor([0.1, -0.7, 2.5]), torch.tensor([0.7, 1.0, 0.6])
    kl = reppo.gaussian_kl(mean_old, std_old, mean, std)
    old, new = torch.distributions.Normal(mean_old, std_old), torch.distributions.Normal(mean, std)
    assert kl.item() == pytest.approx(torch.distributions.kl_divergence(old, new).sum().item(), rel=1e-5)
    samples = old.sample((400_000,))
    monte_carlo = (old.log_prob(samples) - new.log_prob(samples)).sum(-1).mean()
    assert kl.item() == pytest.approx(monte_carlo.item(), abs=0.01)


class ConstantCritic(torch.nn.Module):
    """Q(s, a) = value everywhere (a zero-gradient function of the action, so WPO can differentiate it)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, obs, action, *step):
        return self.value + 0.0 * action.sum(-1)


@pytest.mark.parametrize("script", ["reppo", "wpo"])
def test_trust_region_switches_per_sample(script, request):
    """Samples whose KL exceeds the bound get beta * KL (with its gradient), the others the policy loss."""
    module = request.getfixturevalue(script)
    torch.manual_seed(0)
    actor = module.Actor(4, 2, 16)
    obs = torch.randn(6, 4)
    with torch.no_grad():
        mean, std = actor.dist(obs)
    shift = torch.tensor([0.0, 3.0, 0.0, 3.0, 0.0, 3.0])[:, None]  # odd samples moved far from the old policy
    batch = {"obs": obs, "mean": mean + shift, "std": std}
    loss, _, kl = module.actor_loss(batch, actor, ConstantCritic(7.0), 0.0, 0.5, kl_bound=0.1)
    outside = kl > 0.1
    assert outside.tolist() == [False, True, False, True, False, True]
    assert kl[~outside].abs().max() < 1e-6
    # alpha = 0 and a constant critic: inside the region REPPO's loss is -Q = -7; WPO's is zero (grad Q = 0)
    inside_loss = -7.0 if script == "reppo" else 0.0
    expected = (3 * inside_loss + 0.5 * kl[outside].sum()) / 6
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the gradient is 0.5 * grad KL of the outside samples alone
    loss.backward()
    grads = [p.grad.clone() for p in actor.parameters()]
    actor.zero_grad()
    mean_new, std_new = actor.dist(obs)
    (0.5 * module.gaussian_kl(batch["mean"], std, mean_new, std_new)[outside].sum() / 6).backward()
    for grad, expected_grad in zip(grads, (p.grad for p in actor.parameters()), strict=True):
        assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_da_trust_region_uses_k_times_the_one_step_kl(da_reppo):
    torch.manual_seed(0)
    actor = da_reppo.DiffusionPolicy(4, 2, 16, 4, 3.0, 1.0, True)
    obs, x, k = torch.randn(3, 4), torch.randn(3, 2), torch.tensor([0, 2, 3])
    with torch.no_grad():
        mean, std = actor.kernel(obs, x, k)
    batch = {"obs": obs, "x": x, "k": k, "mean": mean + 0.2, "std": std}
    _, _, kl = da_reppo.actor_loss(batch, actor, ConstantCritic(0.0), 0.1, 0.3, kl_bound=1.0)
    assert torch.allclose(kl, 4 * ((0.2**2) / (2 * std**2)).sum(-1), atol=1e-5)


class GaussianStub(torch.nn.Module):
    """A state-independent N(mu, sigma^2) policy in x with the Actor's interface (log_prob without tanh's log-det)."""

    def __init__(self, mu, sigma):
        super().__init__()
        self.mu, self.log_sigma = torch.nn.Parameter(torch.tensor([mu])), torch.nn.Parameter(torch.tensor([math.log(sigma)]))

    def dist(self, obs):
        return self.mu.expand(len(obs), 1), self.log_sigma.exp().expand(len(obs), 1)

    def log_prob(self, x, mean, std):
        return torch.distributions.Normal(mean, std).log_prob(x).sum(-1)


class QuadraticCritic(torch.nn.Module):
    """Q(s, a) = -(atanh(a) - c)^2 / 2, i.e. a quadratic in the pre-tanh action x."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, obs, action):
        return -0.5 * ((torch.atanh(action) - self.c) ** 2).sum(-1)


def test_wpo_gradient_matches_the_closed_form(wpo):
    """pi = N(mu, sigma^2), Q(x) = -(x - c)^2 / 2: the WPO loss has E-gradients (mu - c) / sigma^2 in mu and
    2 - 2 alpha / sigma^2 in log sigma, zero at the maximum-entropy optimum pi* = N(c, alpha)."""
    torch.manual_seed(0)
    mu, sigma, c, alpha = 0.3, 0.5, 1.0, 0.16
    actor = GaussianStub(mu, sigma)
    batch = {"obs": torch.zeros(200_000, 1), "mean": torch.full((200_000, 1), mu), "std": torch.full((200_000, 1), sigma)}
    loss, _, _ = wpo.actor_loss(batch, actor, QuadraticCritic(c), alpha, 0.0, kl_bound=1.0)
    loss.backward()
    assert actor.mu.grad.item() == pytest.approx((mu - c) / sigma**2, rel=0.02)
    assert actor.log_sigma.grad.item() == pytest.approx(2 - 2 * alpha / sigma**2, abs=0.03)


def test_wpo_per_sample_gradient_of_a_diffusion_kernel(diffwpo):
    """DiffWPO: the gradient in the drift's output bias b is mean_i (alpha g_l - g_Q)_i * eta / sigma^2 = (alpha g_l - g_Q) / 2,
    with g_l the closed-form x_{k+1}-gradient of the log ratio of two Gaussians and g_Q that of a quadratic critic."""
    torch.manual_seed(0)
    actor = diffwpo.DiffusionPolicy(3, 2, 16, 4, 3.0, 1.0, False)
    torch.nn.init.normal_(actor.net[-1].weight, std=0.1)
    obs, x, k = torch.randn(5, 3), torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        mean, std = actor.kernel(obs, x, k)
    batch = {"obs": obs, "x": x, "k": k, "mean": mean, "std": std}
    target, alpha = torch.tensor([0.5, -1.0]), 0.3

    def critic(obs, x_next, k):
        return -0.5 * ((x_next - target) ** 2).sum(-1)

    torch.manual_seed(1)
    loss, _, _ = diffwpo.actor_loss(batch, actor, critic, alpha, 0.0, kl_bound=1.0)
    loss.backward()
    torch.manual_seed(1)
    x_next = mean + std * torch.randn_like(mean)
    eta, shrink = std**2 / 2, 1 - std**2 / 2 / 9.0
    grad_l = -(x_next - mean) / std**2 - (x - shrink * x_next) * shrink / std**2  # d/dx' [log q(x'|x) - log p(x|x')]
    grad_q = -(x_next - target)
    expected = ((alpha * grad_l - grad_q) * eta / std**2).mean(0)
    assert torch.allclose(actor.net[-1].bias.grad, expected, atol=1e-5)


def test_da_policy_kernel_and_log_ratio_are_diffsac_s(da_reppo):
    """DA-MDP REPPO's DiffusionPolicy is DiffSAC's: same parameters, kernel, l_k, and the same sampled chain and log ratios."""
    diffsac = load_script("diffsac.py")
    torch.manual_seed(0)
    ours = da_reppo.DiffusionPolicy(5, 3, 16, 4, 3.0, 1.0, True)
    torch.nn.init.normal_(ours.net[-1].weight, std=0.1)
    theirs = diffsac.DiffusionPolicy(5, 3, 16, 4, 3.0, 1.0, True)
    theirs.load_state_dict(ours.state_dict())
    obs, x, x_next, k = torch.randn(8, 5), torch.randn(8, 3), torch.randn(8, 3), torch.arange(8) % 4
    for a, b in zip(ours.kernel(obs, x, k), theirs.kernel(obs, x, k), strict=True):
        assert torch.allclose(a, b)
    mean, std = ours.kernel(obs, x, k)
    assert torch.allclose(ours.log_ratio(x, k, x_next, mean, std), theirs.log_ratio(x, k, x_next, mean, std))
    samples = []
    for policy in (ours, theirs):
        torch.manual_seed(1)
        samples.append(policy.sample(obs))
    for a, b in zip(*samples, strict=True):
        assert torch.equal(a, b)
    assert ours.prior_entropy() == theirs.prior_entropy()


def test_the_four_diffusion_scripts_share_the_policy_class_word_for_word():
    """DiffusionPolicy (kernel, log ratio, step, chain sampling) is the same source text in all four diffusion scripts."""
    sources = {}
    for script in ("diffsac.py", "diffppo.py", "da_mdp_reppo.py", "diffwpo.py"):
        text = (REPO / script).read_text()
        classes = [node for node in ast.parse(text).body if isinstance(node, ast.ClassDef) and node.name == "DiffusionPolicy"]
        assert len(classes) == 1, script
        sources[script] = ast.get_source_segment(text, classes[0])
    assert len(sources["diffsac.py"].splitlines()) > 40
    for script, source in sources.items():
        assert source == sources["diffsac.py"], f"{script}'s DiffusionPolicy differs from diffsac.py's"


def test_da_sample_returns_the_log_ratios_its_update_recomputes(da_reppo):
    """The rollout's chains are cut into DA transitions (s, x_k, k) -> x_{k+1} as the training loop does: log_ratio there
    gives sample()'s l_k, and the logged entropy bound H_p - sum_k l_k uses H_p, the entropy of N(0, sigma_p^2 I)."""
    torch.manual_seed(0)
    policy = da_reppo.DiffusionPolicy(3, 2, 16, 4, 1.5, 1.0, True)
    torch.nn.init.normal_(policy.net[-1].weight, std=0.1)
    obs = torch.randn(5, 3)
    action, chain, log_ratios = policy.sample(obs)
    assert chain.shape == (5, 5, 2) and log_ratios.shape == (5, 4) and torch.allclose(action, torch.tanh(chain[:, -1]))
    k = torch.arange(4).repeat(5)
    x, x_next = chain[:, :-1].flatten(0, 1), chain[:, 1:].flatten(0, 1)
    mean, std = policy.kernel(obs.repeat_interleave(4, 0), x, k)
    assert torch.allclose(policy.log_ratio(x, k, x_next, mean, std).view(5, 4), log_ratios, atol=1e-5)
    assert policy.prior_entropy() == pytest.approx(torch.distributions.Normal(torch.zeros(2), 1.5).entropy().sum().item(), rel=1e-6)
    # with u = 0 the kernel means x_k (1 - eta_k / sigma_p^2) and the noise-free chain contracts to 0: tanh(0) = 0
    policy = da_reppo.DiffusionPolicy(3, 2, 16, 4, 1.5, 1.0, True)
    action, chain, log_ratios = policy.sample(obs, deterministic=True)
    assert torch.equal(chain, torch.zeros(5, 5, 2)) and torch.equal(action, torch.zeros(5, 2))


@pytest.mark.parametrize("script", ["reppo", "da_reppo", "wpo", "diffwpo"])
def test_agents_normalise_raw_observations(script, request):
    """Agent.sample(raw obs) is the policy's sample at the normalised observations: shifting the normaliser's mean and the
    input by 100 leaves the action unchanged, while the policy itself on the raw input acts differently."""
    module = request.getfixturevalue(script)
    torch.manual_seed(0)
    agent = module.Agent(4, module.make_policy(4, 2, module.Args(hidden_dim=16)))
    torch.nn.init.normal_(agent.policy.net[-1].weight, std=0.5)  # the chain's drift starts at zero, independent of s
    agent.obs_norm.update(3.0 + 2.0 * torch.randn(500, 4))
    obs = 3.0 + 2.0 * torch.randn(6, 4)
    normalised = ((obs - agent.obs_norm.mean) / torch.sqrt(agent.obs_norm.var + 1e-8)).clamp(-10, 10)
    before = agent.sample(obs, deterministic=True)[0]
    assert torch.allclose(before, agent.policy.sample(normalised, deterministic=True)[0])
    assert not torch.allclose(before, agent.policy.sample(obs, deterministic=True)[0], atol=1e-3)
    agent.obs_norm.mean += 100.0
    assert torch.allclose(agent.sample(obs + 100.0, deterministic=True)[0], before, atol=1e-5)
    assert {"obs_norm.mean", "obs_norm.var", "obs_norm.count"} <= agent.state_dict().keys()  # saved with the policy


def test_running_normalisers_match_batch_statistics(reppo):
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(300, 4)).astype(np.float32)
    norm = reppo.ObservationNormalizer(4)
    for chunk in np.split(data, 10):
        norm.update(torch.as_tensor(chunk))
    assert torch.allclose(norm.mean, torch.as_tensor(data.mean(0)), atol=1e-4)
    assert torch.allclose(norm.var, torch.as_tensor(data.var(0)), rtol=1e-3)

    returns = reppo.ReturnNormalizer(num_envs=2, gamma=0.5)
    returns.update(np.array([1.0, 2.0]), np.array([False, True]))
    returns.update(np.array([1.0, 1.0]), np.array([False, False]))
    seen = np.array([1.0, 2.0, 1.5, 1.0])  # discounted returns; env 1 restarted after its episode ended
    assert returns.scale() == pytest.approx(seen.std(), rel=1e-3)


@pytest.mark.parametrize("script", ["da_reppo", "diffwpo"])
def test_default_prior_keeps_initial_actions_off_the_bounds(script, request):
    """With the default prior std (1) under 2% of the untrained chain's action coordinates sit at the bounds (|a| > 0.99).

    Prior std 3 puts 38% there (P(|N(0, 9)| > 2.65)); on HalfCheetah that pinned the critic at -value_bound.
    """
    module = request.getfixturevalue(script)
    args = module.Args()
    torch.manual_seed(0)
    saturated = {}
    for prior_std in (args.prior_std, 3.0):
        actor = module.DiffusionPolicy(17, 6, 32, args.diffusion_steps, prior_std, args.eta_max, args.tanh_correction)
        with torch.no_grad():
            actions = actor.sample(torch.randn(2000, 17))[0]
        saturated[prior_std] = (actions.abs() > 0.99).float().mean().item()
    assert args.prior_std == 1.0
    assert saturated[args.prior_std] < 0.02
    assert saturated[3.0] == pytest.approx(0.38, abs=0.03)


def test_diffwpo_sample_returns_the_log_ratios_of_its_da_transitions(diffwpo):
    """sample() returns tanh(x_K), the chain and l_0..l_{K-1}: the update's log_ratio at the chain's DA transitions
    (s, x_k, k) -> x_{k+1} gives the same l_k, and H_p is the prior's entropy (the entropy bound is H_p - sum_k l_k)."""
    torch.manual_seed(0)
    policy = diffwpo.DiffusionPolicy(3, 2, 16, 4, 1.5, 1.0, True)
    torch.nn.init.normal_(policy.net[-1].weight, std=0.1)
    obs = torch.randn(5, 3)
    action, chain, log_ratios = policy.sample(obs)
    assert chain.shape == (5, 5, 2) and log_ratios.shape == (5, 4)
    assert torch.allclose(action, torch.tanh(chain[:, -1]))
    k = torch.arange(4).repeat(5)
    x, x_next = chain[:, :-1].flatten(0, 1), chain[:, 1:].flatten(0, 1)
    mean, std = policy.kernel(obs.repeat_interleave(4, 0), x, k)
    assert torch.allclose(policy.log_ratio(x, k, x_next, mean, std).view(5, 4), log_ratios, atol=1e-5)
    prior = torch.distributions.Normal(torch.zeros(2), 1.5)
    assert policy.prior_entropy() == pytest.approx(prior.entropy().sum().item(), rel=1e-6)
