"""DA-MDP REPPO: REPPO (arXiv 2507.11019) on the Diffusion-Augmented MDP (arXiv 2512.02019), diffusion policy.

The policy is a K-step denoising chain in pre-tanh space R^A (docs/method.md, sections 2-4). Each denoising step is a
DA-MDP step, state (s, x_k, k), action x_{k+1}; the env moves, pays and discounts only at k = K-1, and l_k replaces
log pi. REPPO runs on it unchanged, one kernel step per sample, with no back-propagation through the chain:

    x_0 ~ N(0, sigma_p^2 I),  q(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / sigma_p^2 + u(s, x_k, k)), 2 eta_k)
    a = low + (tanh(x_K) + 1) / 2 * (high - low),   step sizes eta_k in (0, eta_max) learned
    l_k = log q(x_{k+1}|x_k,s,k) - log p(x_k|x_{k+1}),  p(x_k|x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k)
    l_{K-1} -= sum_d log(1 - tanh(x_K,d)^2)    (tanh correction, as in SAC; --no-tanh-correction drops it)
    critic target  soft TD(lambda) over DA steps with gamma_k = lambda_k = 1 inside the chain (docs/method.md, section 3):
                   G_{K-1,t} = r_t + gamma (1 - terminated_t) [ alpha (H_p - l'_0) + lambda G_{0,t+1} + (1 - lambda) Q(s'_t, x'_1, 0) ]
                   G_{k,t}   = G_{K-1,t} - alpha sum_{j>k} l_{j,t}       (x'_0 ~ prior, x'_1 ~ q(.|s'_t, x'_0, 0) afresh;
                   G_{0,t+1} := Q(s'_t, x'_1, 0) where the episode was truncated or the rollout ends)
                   H_p = A/2 log(2 pi e sigma_p^2), the prior's entropy: E[log pi] <= -H_p + E[sum_k l_k], so the chain's
                   entropy bonus per env step is alpha (H_p - sum_k l_k), not the relative -alpha sum_k l_k
    critic loss    cross-entropy of the categorical critic's logits to HL-Gauss(G), a Gaussian integrated over the value bins
    actor loss     per sample:  alpha l_k(theta) - Q(s, x_{k+1}(theta), k),  x_{k+1} ~ q reparameterised,  while KL_i <= kl_bound
                                stopgrad(beta) KL_i,   otherwise
                   KL_i = K * KL(q_old(.|s,x_k,k) || q(.|s,x_k,k)), closed form for the two diagonal Gaussians
    temperature    loss alpha * stopgrad(H_hat - H_target),  H_hat = H_p - K mean(l_k),  H_target = H_p - c A
    KL multiplier  loss -beta * stopgrad(mean KL - kl_bound): beta grows while the mean KL is over the bound

Observations are normalised by running statistics, saved with the policy; rewards are divided by the running std of the
discounted return, so the critic's range [-value_bound, value_bound] is in units of the task's own return scale.

Run:  python da_mdp_reppo.py --env-id Hopper-v5 --total-timesteps 1000000
"""

import contextlib
import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda is used when available"""
    track: bool = False
    """if toggled, the run is also logged to Weights and Biases"""
    wandb_project_name: str = "diffusion-maxent-rl"
    """the W&B project name"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""
    capture_video: bool = False
    """if toggled, the final evaluation episodes are recorded to `runs/{run_name}/videos`"""
    save_model: bool = False
    """if toggled, the trained model is saved to `runs/{run_name}/model.pt`"""
    evaluate_checkpoint: str | None = None
    """path of a saved model.pt: evaluate it for `--eval-episodes` episodes (on the run's own evaluation seeds) instead of training"""
    env_id: str = "Hopper-v5"
    """the id of the gymnasium environment (continuous actions)"""
    total_timesteps: int = 1_000_000
    """total env steps of the experiment"""
    num_envs: int = 16
    """the number of parallel environments"""
    eval_frequency: int = 50_000
    """evaluate the policy every this many env steps"""
    eval_episodes: int = 5
    """the number of episodes of each evaluation"""
    eval_deterministic: bool = False
    """if toggled, evaluate the noise-free chain (x_0 = 0, every step takes the kernel mean)"""
    num_steps: int = 64
    """env steps per env in each rollout"""
    num_minibatches: int = 8
    """the number of minibatches each epoch splits the rollout into"""
    update_epochs: int = 4
    """passes over each rollout"""
    gamma: float = 0.99
    """the discount factor"""
    td_lambda: float = 0.95
    """lambda of the TD(lambda) critic targets"""
    learning_rate: float = 3e-4
    """the learning rate of the actor and the critic"""
    dual_learning_rate: float = 3e-4
    """the learning rate of the temperature alpha and the KL multiplier beta"""
    max_grad_norm: float = 0.5
    """the maximum norm of the actor's and the critic's gradients"""
    hidden_dim: int = 256
    """width of the hidden layers of every network"""
    num_bins: int = 151
    """the number of bins of the categorical (HL-Gauss) critic"""
    value_bound: float = 10.0
    """the critic's bins span [-value_bound, value_bound], in units of the running std of the discounted return"""
    alpha_init: float = 0.001
    """initial entropy temperature alpha; 0.001 is near where it settles on MuJoCo (0.01: noisy chain for 100k+ steps)"""
    autotune: bool = True
    """if toggled, alpha is tuned towards the entropy target"""
    target_entropy_scale: float = 3.0
    """c in the target H_target = H_p - c * action_dim of the entropy bound H_p - K mean(l_k): H_p on both sides, so -K mean(l_k) -> -c A"""
    kl_bound: float = 0.1
    """per-sample trust region: K * KL(q_old || q) above it switches the sample's loss to beta * KL"""
    beta_init: float = 0.3
    """initial KL Lagrange multiplier beta"""
    diffusion_steps: int = 8
    """K, the number of denoising steps of the chain"""
    prior_std: float = 1.0
    """sigma_p, the std of the prior x_0 ~ N(0, sigma_p^2 I); 1, since 3 saturates actions and pins the critic (docs/method.md)"""
    eta_max: float = 1.0
    """upper bound of the learned step sizes eta_k (kernel std at most sqrt(2 eta_max))"""
    eta_lr: float | None = None
    """the learning rate of the step sizes eta_k (None: --learning-rate); the multimodal task needs a faster one"""
    tanh_correction: bool = True
    """if toggled, l_{K-1} includes tanh's log-det, so the entropy estimate is of the squashed action, as in SAC"""


# ============ PLUMBING: the env, input checks, the NaN guard ============
def to_env(squashed_action, space):
    """Maps tanh(x) in [-1, 1] to the env's bounds: a = low + (tanh(x) + 1) / 2 * (high - low)."""
    return space.low + (squashed_action + 1) / 2 * (space.high - space.low)


def make_env(env_id, seed):
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))
    env.action_space.seed(seed)
    return env


def first_line(error):
    """The first line of an exception's message, for a one-line `error:`."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def check_args(args):
    """Exit with one clear `error:` line on input that cannot train."""
    try:
        probe = gym.make(args.env_id)
    except Exception as error:
        raise SystemExit(f"error: cannot make --env-id {args.env_id!r}: {first_line(error)}") from None
    if not isinstance(space := probe.action_space, gym.spaces.Box):
        raise SystemExit(f"error: --env-id {args.env_id!r} has action space {space}; only continuous (Box) actions are supported")
    probe.close()
    rules = [("seed", "must lie in [0, 2**31)", 0 <= args.seed < 2**31), ("eval_episodes", "must be at least 1", args.eval_episodes >= 1)]
    if args.evaluate_checkpoint is None:  # `> 0` also rejects NaN
        positive = "total_timesteps eval_frequency learning_rate dual_learning_rate max_grad_norm hidden_dim value_bound alpha_init"
        rules += [(name, "must be positive", getattr(args, name) > 0) for name in (positive + " kl_bound beta_init prior_std").split()]
        rules += [(name, "must lie in [0, 1]", 0 <= getattr(args, name) <= 1) for name in ("gamma", "td_lambda")]
        minimum = {"num_envs": 1, "num_steps": 1, "num_minibatches": 1, "update_epochs": 1, "diffusion_steps": 1, "num_bins": 2}
        rules += [(name, f"must be at least {low}", getattr(args, name) >= low) for name, low in minimum.items()]
        rules += [("eta_lr", "must be positive", args.eta_lr is None or args.eta_lr > 0)]
        rules += [("eta_max", "must exceed 0.5, the first step's initial step size", args.eta_max > 0.5)]
    for name, rule, holds in rules:
        if not holds:
            raise SystemExit(f"error: --{name.replace('_', '-')} {rule}, got {getattr(args, name)}")
    if args.evaluate_checkpoint is None and args.total_timesteps < args.num_envs * args.num_steps:
        raise SystemExit(
            f"error: --total-timesteps {args.total_timesteps} must be at least --num-envs * --num-steps = "
            f"{args.num_envs * args.num_steps}, or no gradient update would run"
        )


def real_next_obs(next_obs, infos):
    """The true s' of a SAME_STEP-autoreset vector step: a finished env returns its reset obs, its last in final_obs."""
    real, finished = next_obs.copy(), infos.get("_final_obs", np.zeros(len(next_obs), bool))
    if finished.any():
        real[finished] = np.stack(infos["final_obs"][finished])
    return real


def gradient_step(name, loss, optimizer, parameters, max_grad_norm, step):
    """One clipped gradient step on loss; a NaN or infinite loss stops training instead (never trains on it)."""
    if not torch.isfinite(loss):
        raise SystemExit(f"error: {name} became {loss.item()} at env step {step}; stopping")
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()


# ============ ALGORITHM: networks, policy, losses ============
def mlp(in_dim, out_dim, hidden_dim, layer_norm=False):
    """Two hidden ReLU layers; critics add LayerNorm for stability."""
    norm = (lambda: nn.LayerNorm(hidden_dim)) if layer_norm else nn.Identity
    hidden = [nn.Linear(in_dim, hidden_dim), norm(), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), norm(), nn.ReLU()]
    return nn.Sequential(*hidden, nn.Linear(hidden_dim, out_dim))


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std with running statistics, clipped to [-10, 10]; buffers, so they are saved with the agent."""

    def __init__(self, obs_dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("var", torch.ones(obs_dim))
        self.register_buffer("count", torch.tensor(1e-4))

    def update(self, obs):
        """Merges a batch of raw observations into the running mean and variance (Chan et al.'s parallel formula)."""
        batch_mean, batch_var, batch_count = obs.mean(0), obs.var(0, unbiased=False), obs.shape[0]
        total, delta = self.count + batch_count, batch_mean - self.mean
        self.var.copy_((self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total) / total)
        self.mean.add_(delta * batch_count / total)
        self.count.copy_(total)

    def forward(self, obs):
        return ((obs - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10, 10)


class ReturnNormalizer:
    """Rewards divided by the running std of the discounted return sum_t gamma^t r_t (PPO's reward scaling)."""

    def __init__(self, num_envs, gamma):
        self.gamma, self.returns, self.mean, self.var, self.count = gamma, np.zeros(num_envs), 0.0, 1.0, 1e-4

    def update(self, rewards, dones):
        self.returns = self.returns * self.gamma + rewards
        batch_mean, batch_var, batch_count = self.returns.mean(), self.returns.var(), len(rewards)
        total, delta = self.count + batch_count, batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total) / total
        self.mean, self.count = self.mean + delta * batch_count / total, total
        self.returns[dones] = 0.0

    def scale(self):
        return float(np.sqrt(self.var + 1e-8))


def hl_gauss(values, edges):
    """HL-Gauss targets (B, bins): N(clipped value, (0.75 bin widths)^2) integrated over each bin, renormalised."""
    cdf = torch.special.ndtr((edges - values.clamp(edges[0], edges[-1])[:, None]) / (0.75 * (edges[1] - edges[0])))
    return (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])


class SoftQNetwork(nn.Module):
    """Categorical Q(s, x_{k+1}, k), the soft value of choosing x_{k+1} at step k: logits over value bins, Q = E[bin centre]."""

    def __init__(self, obs_dim, action_dim, hidden_dim, num_bins, value_bound, diffusion_steps):
        super().__init__()
        self.diffusion_steps = diffusion_steps
        self.net = mlp(obs_dim + action_dim + diffusion_steps, num_bins, hidden_dim, layer_norm=True)
        self.register_buffer("edges", torch.linspace(-value_bound, value_bound, num_bins + 1))

    def logits(self, obs, x_next, k):
        return self.net(torch.cat([obs, x_next, F.one_hot(k, self.diffusion_steps).float()], -1))

    def forward(self, *inputs):
        return torch.softmax(self.logits(*inputs), -1) @ ((self.edges[1:] + self.edges[:-1]) / 2)


class DiffusionPolicy(nn.Module):
    """K-step denoising chain x_0 -> x_K in pre-tanh space R^A; the squashed action is tanh(x_K) in [-1, 1]^A."""

    def __init__(self, obs_dim, action_dim, hidden_dim, diffusion_steps, prior_std, eta_max, tanh_correction):
        super().__init__()
        self.action_dim, self.diffusion_steps, self.prior_std = action_dim, diffusion_steps, prior_std
        self.eta_max, self.tanh_correction = eta_max, tanh_correction
        self.net = mlp(obs_dim + action_dim + diffusion_steps, action_dim, hidden_dim)
        nn.init.zeros_(self.net[-1].weight)  # u = 0: the chain starts as an Ornstein-Uhlenbeck chain that keeps x near the prior
        nn.init.zeros_(self.net[-1].bias)
        # eta_k starts on the authors' schedule 0.5 (0.17 + 0.83 (K - k) / K) and is learned per (step, dim) below eta_max
        steps = torch.arange(diffusion_steps, dtype=torch.float32)
        eta = 0.5 * (0.17 + 0.83 * (diffusion_steps - steps) / diffusion_steps)
        self.eta_param = nn.Parameter(torch.logit(eta / eta_max)[:, None].repeat(1, action_dim))

    def eta(self):
        """Step sizes eta_k = eta_max * sigmoid(param), shape (K, A)."""
        return self.eta_max * torch.sigmoid(self.eta_param)

    def prior_entropy(self):
        """H_prior = A/2 log(2 pi e sigma_p^2), the entropy of x_0 ~ N(0, sigma_p^2 I)."""
        return 0.5 * self.action_dim * np.log(2 * np.pi * np.e * self.prior_std**2)

    def kernel(self, obs, x, k):
        """Mean and std of the denoising kernel q(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / sigma_p^2 + u), 2 eta_k)."""
        eta = self.eta()[k]
        u = self.net(torch.cat([obs, x, F.one_hot(k, self.diffusion_steps).float()], -1))
        return x + eta * (-x / self.prior_std**2 + u), torch.sqrt(2 * eta)

    def log_ratio(self, x, k, x_next, mean, std):
        """l_k = log q(x_{k+1} | x_k, s, k) - log p(x_k | x_{k+1}), given q's mean and std (docs/method.md, section 2)."""
        eta = std**2 / 2  # eta_k, from q's std sqrt(2 eta_k)
        p_mean = x_next - eta * x_next / self.prior_std**2  # p(x_k | x_{k+1}), normalised in x_k
        # q and p share the variance 2 eta_k = std^2, so their normalising constants cancel
        l_k = (((x - p_mean) ** 2 - (x_next - mean) ** 2) / (2 * std**2)).sum(-1)
        if self.tanh_correction:  # l_{K-1} -= log|d tanh(x_K) / dx_K|, so the bound is of the squashed action, as in SAC
            log_det = 2 * (np.log(2.0) - x_next - F.softplus(-2 * x_next)).sum(-1)
            l_k = l_k - torch.where(k == self.diffusion_steps - 1, log_det, 0.0)
        return l_k

    def step(self, obs, x, k):
        """One denoising step: x_{k+1} ~ q(.|x_k, s, k) (reparameterised) and its log ratio l_k."""
        mean, std = self.kernel(obs, x, k)
        x_next = mean + std * torch.randn_like(mean)
        return x_next, self.log_ratio(x, k, x_next, mean, std)

    def sample(self, obs, deterministic=False, with_log_ratios=True):
        """The chain from a fresh prior sample: tanh(x_K), x_0..x_K (B, K+1, A) and l_0..l_{K-1} (B, K), or None for the l_k
        (acting and evaluation, which skip their cost). deterministic: x_0 = 0 and every step takes the kernel's mean."""
        x = torch.zeros(obs.shape[0], self.action_dim, device=obs.device)
        if not deterministic:
            x = self.prior_std * torch.randn_like(x)
        chain, log_ratios = [x], []
        for k in range(self.diffusion_steps):
            k_batch = torch.full((obs.shape[0],), k, device=obs.device)
            mean, std = self.kernel(obs, x, k_batch)
            x_next = mean if deterministic else mean + std * torch.randn_like(mean)
            if with_log_ratios:
                log_ratios.append(self.log_ratio(x, k_batch, x_next, mean, std))
            x = x_next
            chain.append(x)
        return torch.tanh(x), torch.stack(chain, 1), torch.stack(log_ratios, 1) if with_log_ratios else None


def make_policy(obs_dim, action_dim, args):
    """The policy of a run's Args (for training and for reloading a checkpoint)."""
    return DiffusionPolicy(obs_dim, action_dim, args.hidden_dim, args.diffusion_steps, args.prior_std, args.eta_max, args.tanh_correction)


class Agent(nn.Module):
    """The policy behind the running observation normaliser: sample() takes raw observations (evaluation: no l_k); both saved."""

    def __init__(self, obs_dim, policy):
        super().__init__()
        self.obs_norm, self.policy = ObservationNormalizer(obs_dim), policy

    def sample(self, obs, deterministic=False):
        return self.policy.sample(self.obs_norm(obs), deterministic, with_log_ratios=False)


def gaussian_kl(mean_old, std_old, mean, std):
    """KL(N(mean_old, std_old^2) || N(mean, std^2)) of diagonal Gaussians, summed over the last dim."""
    return (torch.log(std / std_old) + (std_old**2 + (mean_old - mean) ** 2) / (2 * std**2) - 0.5).sum(-1)


def td_lambda_targets(rewards, next_q, next_log_ratio, log_ratios, terminated, truncated, alpha, gamma, td_lambda, prior_entropy):
    """Soft TD(lambda) targets G (T, N, K) of one rollout's DA transitions (the module docstring's critic target), backwards in time.
    rewards, next_q, next_log_ratio (l'_0), terminated and truncated are (T, N); log_ratios, the chains' l_k, (T, N, K)."""
    chain_entropy = alpha * (log_ratios.flip(-1).cumsum(-1).flip(-1) - log_ratios)  # alpha sum_{j>k} l_j, (T, N, K)
    targets = torch.zeros_like(rewards)
    for t in reversed(range(len(rewards))):
        continuation = next_q[t]
        if t + 1 < len(rewards):
            next_target = targets[t + 1] - chain_entropy[t + 1, :, 0]  # G_{0,t+1}
            continuation = torch.where(truncated[t], next_q[t], td_lambda * next_target + (1 - td_lambda) * next_q[t])
        targets[t] = rewards[t] + gamma * (1 - terminated[t]) * (continuation + alpha * (prior_entropy - next_log_ratio[t]))
    return targets[..., None] - chain_entropy


def critic_loss(batch, qf):
    """Cross-entropy of the critic's logits to the HL-Gauss distributions of the targets; also returns Q."""
    logits, target_probs = qf.logits(batch["obs"], batch["x_next"], batch["k"]), hl_gauss(batch["targets"], qf.edges)
    q_values = torch.softmax(logits.detach(), -1) @ ((qf.edges[1:] + qf.edges[:-1]) / 2)
    return -(target_probs * F.log_softmax(logits, -1)).sum(-1).mean(), q_values


def actor_loss(batch, actor, qf, alpha, beta, kl_bound):
    """Per sample alpha l_k - Q(s, x_{k+1}, k) (pathwise, one kernel step) inside the trust region, beta KL outside; returns it, l_k, KL."""
    obs, x, k = batch["obs"], batch["x"], batch["k"]
    mean, std = actor.kernel(obs, x, k)
    x_next = mean + std * torch.randn_like(mean)
    l_k = actor.log_ratio(x, k, x_next, mean, std)
    kl = actor.diffusion_steps * gaussian_kl(batch["mean"], batch["std"], mean, std)
    loss = torch.where(kl <= kl_bound, alpha * l_k - qf(obs, x_next, k), beta * kl)
    return loss.mean(), l_k, kl


# ============ EVALUATION AND CHECKPOINTS ============
@torch.no_grad()
def evaluate(agent, env_id, episodes, seed, deterministic, device, video_dir=None):
    """Undiscounted returns of `episodes` episodes on a fresh env, episode i reset with seed + i."""
    env = gym.make(env_id, render_mode="rgb_array" if video_dir else None)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda _: True, disable_logger=True)
    returns = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the sampler noise: seeded by `seed` alone
        torch.manual_seed(seed)
        for episode in range(episodes):
            (obs, _), terminated, truncated = env.reset(seed=seed + episode), False, False
            returns.append(0.0)
            while not (terminated or truncated):
                action = agent.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], deterministic)[0]
                obs, reward, terminated, truncated, _ = env.step(to_env(action[0].cpu().numpy(), env.action_space))
                returns[-1] += float(reward)
    env.close()
    return np.array(returns)


def load_actor(path, device):
    """The Agent (policy and observation normaliser) of a checkpoint written by --save-model, the run's Args and env steps."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # missing, unreadable, or not a torch file
        raise SystemExit(f"error: cannot load --evaluate-checkpoint {path}: {first_line(error)}") from None
    script = os.path.basename(__file__)
    written_by = checkpoint.get("script", "another program") if isinstance(checkpoint, dict) else "another program"
    if written_by != script:
        raise SystemExit(f"error: --evaluate-checkpoint {path} was written by {written_by}, not by {script}")
    saved = Args(**checkpoint["args"])
    env = gym.make(saved.env_id)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = Agent(obs_dim, make_policy(obs_dim, action_dim, saved))
    agent.load_state_dict(checkpoint["actor"])
    return agent.to(device), saved, checkpoint["env_steps"]


# ============ TRAINING: set-up, then per iteration the env step, the update, logging, evaluation ============
if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and not torch.cuda.is_available():
        print("--cuda: no GPU is visible, so the run uses the CPU")
    for seed_rng in (random.seed, np.random.seed, torch.manual_seed):
        seed_rng(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.evaluate_checkpoint is not None:
        agent, saved, env_steps = load_actor(args.evaluate_checkpoint, device)
        returns = evaluate(agent, saved.env_id, args.eval_episodes, saved.seed + 10_000, args.eval_deterministic, device)
        print(f"{saved.env_id}: eval returns {np.round(returns, 2).tolist()}")
        print(f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes at env step {env_steps}")
        raise SystemExit(0)

    run_name = f"{args.env_id.replace(':', '_').replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    for copy in range(1, 1000):  # a run started in the same second under the same name gets its own folder, name_2...
        run_dir = os.path.join("runs", run_name if copy == 1 else f"{run_name}_{copy}")
        with contextlib.suppress(FileExistsError):
            os.makedirs(run_dir)
            break
    run_name = os.path.basename(run_dir)
    writer = SummaryWriter(run_dir)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=asdict(args), name=run_name)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(asdict(args), f, indent=2)
    metrics_file, start_time = open(os.path.join(run_dir, "metrics.jsonl"), "a"), time.time()

    def log_scalars(step, scalars):  # to TensorBoard and, one JSON line per call, to metrics.jsonl
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        print(json.dumps({"step": step, "time": round(time.time() - start_time, 2), **scalars}), file=metrics_file, flush=True)

    env_fns = [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_envs)]
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent = Agent(obs_dim, actor := make_policy(obs_dim, action_dim, args)).to(device)
    qf = SoftQNetwork(obs_dim, action_dim, args.hidden_dim, args.num_bins, args.value_bound, args.diffusion_steps).to(device)
    eta_group = {"params": [actor.eta_param], "lr": args.eta_lr or args.learning_rate}  # the step sizes' own learning rate
    actor_optimizer = torch.optim.Adam([{"params": actor.net.parameters()}, eta_group], lr=args.learning_rate)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.learning_rate)
    log_alpha = torch.tensor(np.log(args.alpha_init), dtype=torch.float32, device=device, requires_grad=True)
    log_beta = torch.tensor(np.log(args.beta_init), dtype=torch.float32, device=device, requires_grad=True)
    dual_optimizer = torch.optim.Adam([log_alpha, log_beta], lr=args.dual_learning_rate)
    target_entropy = actor.prior_entropy() - args.target_entropy_scale * action_dim  # H_p on both sides: see target_entropy_scale
    return_normalizer = ReturnNormalizer(args.num_envs, args.gamma)

    obs, _ = envs.reset(seed=args.seed)
    global_step, recent_returns, next_eval, last_print, last_print_step = 0, [], args.eval_frequency, start_time, 0
    vector_steps = args.total_timesteps // args.num_envs
    stop = []  # Ctrl-C or SIGTERM: finish the iteration, then save and exit; a second one exits at once
    for signum in (signal.SIGINT, signal.SIGTERM):  # the second signal raises KeyboardInterrupt
        signal.signal(signum, lambda signum, frame: signal.default_int_handler(signum, frame) if stop else stop.append(signum))
    for iteration_start in range(0, vector_steps, args.num_steps):
        # --- rollout: num_steps steps of every env with the current policy, stacked to (T, N, ...) ---
        rollout_steps, rollout = min(args.num_steps, vector_steps - iteration_start), []
        for _ in range(rollout_steps):
            global_step += args.num_envs
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)
            with torch.no_grad():
                agent.obs_norm.update(obs_tensor)
                norm_obs = agent.obs_norm(obs_tensor)
                actions, chains, _ = actor.sample(norm_obs, with_log_ratios=False)
            obs, rewards, terminations, truncations, infos = envs.step(to_env(actions.cpu().numpy(), envs.single_action_space))
            for i in np.flatnonzero(infos.get("_final_info", [])):
                episode = infos["final_info"]["episode"]
                recent_returns = (recent_returns + [float(episode["r"][i])])[-10:]
                log_scalars(global_step, {"charts/episodic_return": float(episode["r"][i]), "charts/episodic_length": int(episode["l"][i])})
            return_normalizer.update(rewards, terminations | truncations)
            # s' is normalised with the statistics s was normalised with, so Q(s') and Q(s) see one scale
            next_norm_obs = agent.obs_norm(torch.as_tensor(real_next_obs(obs, infos), dtype=torch.float32, device=device))
            rollout.append((norm_obs, chains, rewards, terminations, truncations & ~terminations, next_norm_obs))
        columns = zip(("obs", "chains", "rewards", "terminated", "truncated", "next_obs"), zip(*rollout, strict=True), strict=True)
        rollout = {key: torch.stack([torch.as_tensor(value, device=device) for value in values]) for key, values in columns}

        # --- the rollout's T * N * K DA transitions (s, x_k, k) -> x_{k+1}, with the old kernels and log ratios ---
        alpha = log_alpha.exp().item()
        with torch.no_grad():
            chains, K = rollout["chains"].flatten(0, 1), args.diffusion_steps  # (T*N, K+1, A)
            data = {"obs": rollout["obs"].flatten(0, 1).repeat_interleave(K, 0), "x": chains[:, :-1].flatten(0, 1)}
            data |= {"x_next": chains[:, 1:].flatten(0, 1), "k": torch.arange(K, device=device).repeat(len(chains))}
            data["mean"], data["std"] = actor.kernel(data["obs"], data["x"], data["k"])
            log_ratios = actor.log_ratio(data["x"], data["k"], data["x_next"], data["mean"], data["std"]).view(-1, args.num_envs, K)
            # --- soft TD(lambda) targets, with a fresh first kernel step x'_1 ~ q(.|s', x'_0, 0) at every next state ---
            prior_sample = actor.prior_std * torch.randn(*rollout["next_obs"].shape[:2], action_dim, device=device)
            first_step = torch.zeros(rollout["next_obs"].shape[:2], dtype=torch.long, device=device)
            next_x, next_log_ratio = actor.step(rollout["next_obs"], prior_sample, first_step)
            next_q = qf(rollout["next_obs"], next_x, first_step)
            rewards = rollout["rewards"].float() / return_normalizer.scale()
            td_args = (rollout["terminated"].float(), rollout["truncated"], alpha, args.gamma, args.td_lambda)
            targets = td_lambda_targets(rewards, next_q, next_log_ratio, log_ratios, *td_args, actor.prior_entropy())
        data["targets"] = targets.flatten()

        # --- update_epochs passes of minibatch updates: critic, then actor, then the two multipliers ---
        for _ in range(args.update_epochs):
            for indices in torch.randperm(len(data["targets"]), device=device).chunk(args.num_minibatches):
                batch = {key: value[indices] for key, value in data.items()}
                qf_loss, q_values = critic_loss(batch, qf)
                gradient_step("qf_loss", qf_loss, q_optimizer, qf.parameters(), args.max_grad_norm, global_step)
                alpha, beta = log_alpha.exp().item(), log_beta.exp().item()
                policy_loss, l_k, kl = actor_loss(batch, actor, qf, alpha, beta, args.kl_bound)
                gradient_step("actor_loss", policy_loss, actor_optimizer, actor.parameters(), args.max_grad_norm, global_step)
                entropy = actor.prior_entropy() - K * l_k.detach().mean()  # H_p - sum over the K steps of l_k
                alpha_loss = log_alpha.exp() * (entropy.detach() - target_entropy)  # raises alpha while H_hat < H_target
                beta_loss = -log_beta.exp() * (kl.detach().mean() - args.kl_bound)  # raises beta while mean KL > kl_bound
                dual_optimizer.zero_grad()
                (alpha_loss * args.autotune + beta_loss).backward()
                dual_optimizer.step()

        scalars = {"losses/qf_loss": qf_loss.item(), "losses/qf_values": q_values.mean().item()}
        scalars |= {"losses/actor_loss": policy_loss.item(), "losses/kl": kl.mean().item()}
        scalars |= {"losses/kl_clip_fraction": (kl > args.kl_bound).float().mean().item(), "losses/alpha": log_alpha.exp().item()}
        scalars |= {"losses/beta": log_beta.exp().item(), "losses/target_mean": targets.mean().item()}
        outside = (targets.abs() > args.value_bound).float().mean().item()
        scalars |= {"losses/target_outside_fraction": outside, "losses/reward_scale": return_normalizer.scale()}
        saturated = (chains[:, -1].tanh().abs() > 0.99).float().mean().item()
        scalars |= {"diffusion/entropy": entropy.item(), "policy/saturated_fraction": saturated}
        scalars |= {f"diffusion/eta_{j}": eta_j.item() for j, eta_j in enumerate(actor.eta().mean(-1))}
        log_scalars(global_step, scalars | {"charts/SPS": int(global_step / (time.time() - start_time))})

        final = iteration_start + rollout_steps == vector_steps
        if global_step >= next_eval or final:
            next_eval += args.eval_frequency
            video_dir = os.path.join(run_dir, "videos") if final and args.capture_video else None
            returns = evaluate(agent, args.env_id, args.eval_episodes, args.seed + 10_000, args.eval_deterministic, device, video_dir)
            log_scalars(global_step, {"eval/episodic_return": float(returns.mean())})
            if final:
                print(f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes at env step {global_step}")
        if time.time() - last_print > 5 or final:
            sps = (global_step - last_print_step) / (time.time() - last_print)  # recent speed, for the time left
            last_print, last_print_step = time.time(), global_step
            recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
            left = (args.total_timesteps - global_step) / max(sps, 1e-9) / 60
            print(f"step {global_step}/{args.total_timesteps} | return {recent} | SPS {sps:.0f} | time left {left:.1f} min", flush=True)
        if stop:
            print(f"interrupted at env step {global_step}: the run is unfinished", flush=True)
            break

    if args.save_model:
        model_path = os.path.join(run_dir, "model.pt")
        checkpoint = {"script": os.path.basename(__file__), "env_steps": global_step, "args": asdict(args), "actor": agent.state_dict()}
        checkpoint.update(qf=qf.state_dict(), log_alpha=log_alpha.detach(), log_beta=log_beta.detach())
        checkpoint["return_normalizer"] = {key: getattr(return_normalizer, key) for key in ("mean", "var", "count")}
        torch.save(checkpoint, model_path)
        print(f"model saved to {model_path} at env step {global_step}")
    for resource in (envs, writer, metrics_file):
        resource.close()
    if stop:
        raise SystemExit(128 + stop[0])
