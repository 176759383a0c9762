"""DiffPPO: PPO on the Diffusion-Augmented MDP (arXiv 2512.02019), diffusion policy.

The policy is a K-step denoising chain in pre-tanh space R^A (docs/method.md, sections 2-4); its log pi(a|s) is
intractable. The one idea: every denoising step is a step of an augmented MDP (the DA-MDP), state (s, x_k, k) and
action x_{k+1}, with the env reward and discount only at k = K-1, and the per-step log ratio l_k against the noising
kernel p replaces log pi. PPO runs on it: T env steps are T*K DA steps j = t*K + k, each with a value V(s, x_k, k):

    x_0 ~ N(0, sigma_p^2 I),  q(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / sigma_p^2 + u(s, x_k, k)), 2 eta_k)
    a = low + (tanh(x_K) + 1) / 2 * (high - low),   step sizes eta_k in (0, eta_max) learned
    p(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k),   l_k = log q(x_{k+1}|x_k,s,k) - log p(x_k|x_{k+1})
    l_{K-1} -= sum_d log(1 - tanh(x_K,d)^2)    (tanh correction; --no-tanh-correction drops it)
    soft reward   r~_j = [k = K-1] r_t / std(discounted return) - eps * l_k
    GAE           delta_j = r~_j + gamma_j (1 - done_j) V_{j+1} - V_j,  A_j = delta_j + gamma_j lambda_j (1 - done_j) A_{j+1}
                  gamma_j, lambda_j, done_j: gamma, lambda, done_t at k = K-1; 1, 1, 0 inside the chain
    policy loss   E[max(-A rho, -A clip(rho, 1 - c, 1 + c)) - stopgrad(rho) eps log p_theta(x_k|x_{k+1})],
                  rho = q_theta(x_{k+1}|x_k,s,k) / q_old(x_{k+1}|x_k,s,k), one kernel step, never the whole chain
    value loss    0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)],  R = A + V_old

V is 256 wide (--critic-hidden-dim; CleanRL: 64), the policy 64: the chain's V(s, x_k, k) needs the width most, and PPO
learns faster with it too. A truncated env step adds gamma V(final observation) (on the DA-MDP at x_0 ~ prior, k = 0)
to its reward and ends the trace. Observations are normalised by the Agent's running statistics (saved with it, frozen
in evaluation), rewards by the running std of the discounted return. `diff baselines/ppo.py diffppo.py` is the method.

Run:  python diffppo.py --env-id Hopper-v5 --total-timesteps 1000000
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
    num_envs: int = 1
    """the number of parallel environments"""
    eval_frequency: int = 10_000
    """evaluate the policy every this many env steps (after the rollout that crosses the mark)"""
    eval_episodes: int = 5
    """the number of episodes of each evaluation"""
    eval_deterministic: bool = False
    """if toggled, evaluate the noise-free chain (x_0 = 0, every step takes the kernel mean)"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to zero over the run"""
    num_steps: int = 2048
    """env steps per env in each rollout"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """lambda of the generalized advantage estimate"""
    num_minibatches: int = 32
    """the number of minibatches each epoch splits the rollout into"""
    update_epochs: int = 10
    """the number of passes over each rollout"""
    norm_adv: bool = True
    """if toggled, advantages are normalised within each minibatch"""
    clip_coef: float = 0.2
    """the clipping range c of the probability ratio (and of the value change)"""
    clip_vloss: bool = True
    """if toggled, the value loss is clipped like the policy objective"""
    ent_coef: float = 2e-4
    """eps, the weight of the entropy bonus -eps l_k in the (normalised) reward of every DA step"""
    vf_coef: float = 0.5
    """the weight of the value loss"""
    max_grad_norm: float = 0.5
    """the maximum norm of the gradient"""
    normalize_reward: bool = True
    """if toggled, rewards are divided by the running std of the discounted return (clipped to [-10, 10])"""
    hidden_dim: int = 64
    """width of the hidden layers of the policy network"""
    critic_hidden_dim: int = 256
    """width of the hidden layers of the value network (CleanRL: 64; see the module docstring)"""
    diffusion_steps: int = 8
    """K, the number of denoising steps of the chain"""
    prior_std: float = 1.0
    """sigma_p, the std of the prior x_0 ~ N(0, sigma_p^2 I); 1, since 3 saturates actions (docs/method.md, section 4)"""
    eta_max: float = 1.0
    """upper bound of the learned step sizes eta_k (kernel std at most sqrt(2 eta_max))"""
    eta_lr: float | None = None
    """the learning rate of the step sizes eta_k (None: --learning-rate); the multimodal task needs a faster one"""
    tanh_correction: bool = True
    """if toggled, l_{K-1} includes tanh's log-det, so the entropy bonus is of the squashed action, as in PPO's log pi"""


# ============ PLUMBING: the env, input checks, running statistics ============
def to_env(squashed_action, space):
    """Maps tanh(x) in [-1, 1] to the env's bounds: a = low + (tanh(x) + 1) / 2 * (high - low)."""
    return space.low + (squashed_action + 1) / 2 * (space.high - space.low)


def make_env(env_id, seed):
    """The env with episode statistics, its action space seeded (SyncVectorEnv calls it through a lambda)."""
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
    if args.evaluate_checkpoint is None:
        positive = "total_timesteps eval_frequency learning_rate clip_coef max_grad_norm".split()
        rules += [(name, "must be positive", getattr(args, name) > 0) for name in positive]  # `> 0` also rejects NaN
        rules += [(name, "must lie in [0, 1]", 0 <= getattr(args, name) <= 1) for name in ("gamma", "gae_lambda")]
        at_least_one = "num_envs num_steps num_minibatches update_epochs hidden_dim critic_hidden_dim".split()
        rules += [(name, "must be at least 1", getattr(args, name) >= 1) for name in at_least_one]
        rollout = args.num_steps * args.num_envs
        rules += [("num_minibatches", f"must be at most half the rollout's {rollout} env steps", 2 * args.num_minibatches <= rollout)]
        rules += [("total_timesteps", f"must cover one rollout of {rollout} env steps", args.total_timesteps >= rollout)]
        rules += [("prior_std", "must be positive", args.prior_std > 0)]
        rules += [("diffusion_steps", "must be at least 1", args.diffusion_steps >= 1)]
        rules += [("eta_lr", "must be positive", args.eta_lr is None or args.eta_lr > 0)]
        rules += [("eta_max", "must exceed 0.5, the first step's initial step size", args.eta_max > 0.5)]
    for name, rule, holds in rules:
        if not holds:
            raise SystemExit(f"error: --{name.replace('_', '-')} {rule}, got {getattr(args, name)}")


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (parallel algorithm); buffers, so saved with the model."""

    def __init__(self, shape=()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch):
        batch = batch.to(torch.float64)
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.var.copy_((self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total) / total)
        self.mean.add_(delta * batch_count / total)
        self.count.copy_(total)

    def normalize(self, x):
        """(x - mean) / std clipped to [-10, 10], as CleanRL's NormalizeObservation wrapper."""
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10, 10).float()


# ============ ALGORITHM: networks, policy, losses ============
def mlp(in_dim, out_dim, hidden_dim, last_std=1.0):
    """Two hidden tanh layers with orthogonal initialisation (CleanRL's layer_init); the last layer's gain is last_std."""
    layers = [nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, out_dim)]
    for layer, gain in zip(layers[::2], (np.sqrt(2), np.sqrt(2), last_std), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def gaussian_log_prob(y, mean, std):
    """log N(y; mean, diag(std^2)), summed over the last dimension."""
    return (-((y - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)


class ValueNetwork(nn.Module):
    """V(s, x_k, k): the soft value of the DA state, denoising step k with x_k (k = 0: x_0 from the prior)."""

    def __init__(self, obs_dim, action_dim, hidden_dim, diffusion_steps):
        super().__init__()
        self.diffusion_steps = diffusion_steps
        self.net = mlp(obs_dim + action_dim + diffusion_steps, 1, hidden_dim)

    def forward(self, obs, x, k):
        return self.net(torch.cat([obs, x, F.one_hot(k, self.diffusion_steps).float()], -1)).squeeze(-1)


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


class Agent(nn.Module):
    """The policy behind a running observation normaliser, saved with it; evaluation does not update the statistics."""

    def __init__(self, obs_dim, action_dim, args):
        super().__init__()
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.policy = DiffusionPolicy(
            obs_dim, action_dim, args.hidden_dim, args.diffusion_steps, args.prior_std, args.eta_max, args.tanh_correction
        )

    def sample(self, obs, deterministic=False):
        """Evaluation's sample from raw observations, normalised with the frozen statistics: [0] is the squashed action, no l_k."""
        return self.policy.sample(self.obs_rms.normalize(obs), deterministic, with_log_ratios=False)


def da_mdp_sequence(env_rewards, env_dones, log_ratio, ent_coef, gamma, gae_lambda):
    """The rollout as DA-MDP steps j = t*K + k (docs/method.md, section 3), from (T, N) env rewards and dones and
    (T, K, N) l_k: (T*K, N) soft rewards -eps l_k (+ r_t at k = K-1) and dones, (T*K, 1) gamma_j and lambda_j."""
    num_steps, diffusion_steps, num_envs = log_ratio.shape
    soft_rewards = -ent_coef * log_ratio
    soft_rewards[:, -1] += env_rewards
    dones = torch.zeros_like(soft_rewards)
    dones[:, -1] = env_dones
    last_step = (torch.arange(diffusion_steps, device=log_ratio.device) == diffusion_steps - 1).float()
    gammas, lambdas = ((1 + last_step * (g - 1)).repeat(num_steps)[:, None] for g in (gamma, gae_lambda))
    return soft_rewards.reshape(-1, num_envs), dones.reshape(-1, num_envs), gammas, lambdas


def compute_gae(rewards, values, dones, last_value, gamma, gae_lambda):
    """GAE over a rollout (T, N): A_t = delta_t + gamma_t lambda_t (1 - done_t) A_{t+1}, with V_T = last_value and
    delta_t = r_t + gamma_t (1 - done_t) V_{t+1} - V_t; done_t ends the episode after step t. gamma and gae_lambda are
    numbers, or per-step (T, 1) tensors on the DA-MDP (diffppo.py's da_mdp_sequence)."""
    not_done = 1.0 - dones
    deltas = rewards + gamma * not_done * torch.cat([values[1:], last_value[None]]) - values
    decay = (gamma * gae_lambda * not_done).cpu().numpy()
    advantages = deltas.cpu().numpy()
    for t in reversed(range(len(advantages) - 1)):  # the only sequential part, on numpy: fast for long rollouts
        advantages[t] += decay[t] * advantages[t + 1]
    return torch.as_tensor(advantages, device=rewards.device)


def policy_loss(policy, batch, clip_coef, norm_adv, ent_coef):
    """Clipped surrogate on the one-step kernel ratio plus the reference-kernel term; also returns rho."""
    mean, std = policy.kernel(batch["obs"], batch["x"], batch["k"])
    log_q = gaussian_log_prob(batch["x_next"], mean, std)
    ratio = (log_q - batch["log_prob"]).exp()
    advantages, scale = batch["advantages"], 1.0
    if norm_adv:
        scale = advantages.std() + 1e-8
        advantages = (advantages - advantages.mean()) / scale
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    # the bonus's eps log p_theta(x_k|x_{k+1}) depends on theta through eta_k (docs/method.md, section 4): descending
    # -stopgrad(rho) eps log p_theta ascends it, in A's units (/ scale), where unclipped, as the reference does (tanh's
    # term in l_{K-1} has no theta)
    log_p = log_q - policy.log_ratio(batch["x"], batch["k"], batch["x_next"], mean, std)
    not_clipped = (unclipped >= clipped).float()
    reference_term = -ratio.detach() * ent_coef * log_p / scale * not_clipped
    return (torch.max(unclipped, clipped) + reference_term).mean(), ratio


def value_loss(critic, batch, clip_coef, clip_vloss):
    """0.5 E[(V - R)^2], clipped around the rollout's values like the policy objective when clip_vloss."""
    new_value = critic(batch["obs"], batch["x"], batch["k"])
    loss = (new_value - batch["returns"]) ** 2
    if clip_vloss:
        clipped_value = batch["values"] + (new_value - batch["values"]).clamp(-clip_coef, clip_coef)
        loss = torch.max(loss, (clipped_value - batch["returns"]) ** 2)
    return 0.5 * loss.mean()


# ============ EVALUATION AND CHECKPOINTS ============
@torch.no_grad()
def evaluate(agent, env_id, episodes, seed, deterministic, device, video_dir=None):
    """Undiscounted returns of `episodes` episodes, episode i reset with seed + i; observation statistics frozen."""
    env = gym.make(env_id, render_mode="rgb_array" if video_dir else None)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda _: True, disable_logger=True)
    returns = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the sampler noise: seeded by `seed` alone
        torch.manual_seed(seed)
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, episode_return = False, 0.0
            while not done:
                action = agent.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], deterministic)[0]
                obs, reward, terminated, truncated, _ = env.step(to_env(action[0].cpu().numpy(), env.action_space))
                episode_return, done = episode_return + float(reward), terminated or truncated
            returns.append(episode_return)
    env.close()
    return np.array(returns)


def load_actor(path, device):
    """Rebuilds the Agent (policy and observation statistics) of a --save-model checkpoint; returns it, its Args, its env steps."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # missing, unreadable, or not a torch file
        raise SystemExit(f"error: cannot load --evaluate-checkpoint {path}: {first_line(error)}") from None
    written_by = checkpoint.get("script", "another program") if isinstance(checkpoint, dict) else "another program"
    if written_by != (script := os.path.basename(__file__)):
        raise SystemExit(f"error: --evaluate-checkpoint {path} was written by {written_by}, not by {script}")
    saved = Args(**checkpoint["args"])
    env = gym.make(saved.env_id)
    agent = Agent(env.observation_space.shape[0], env.action_space.shape[0], saved)
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
    metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    start_time = time.time()

    def log_scalars(step, scalars):
        """Writes scalars to TensorBoard and, one JSON line per call, to metrics.jsonl."""
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        metrics_file.write(json.dumps({"step": step, "time": round(time.time() - start_time, 2), **scalars}) + "\n")
        metrics_file.flush()

    K, N = args.diffusion_steps, args.num_envs
    env_fns = [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(N)]
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent = Agent(obs_dim, action_dim, args).to(device)
    critic = ValueNetwork(obs_dim, action_dim, args.critic_hidden_dim, K).to(device)
    eta_lr = args.learning_rate if args.eta_lr is None else args.eta_lr
    other_params = [p for name, p in agent.policy.named_parameters() if name != "eta_param"] + list(critic.parameters())
    param_groups = [{"params": other_params}, {"params": [agent.policy.eta_param], "lr": eta_lr}]
    optimizer = torch.optim.Adam(param_groups, lr=args.learning_rate, eps=1e-5)
    reward_rms = RunningMeanStd().to(device)
    num_iterations, leftover = divmod(args.total_timesteps // N, args.num_steps)  # the last rollout takes the rest
    # rollout storage, one row per env step, allocated per rollout
    buffer_shapes = [(N, obs_dim), (K + 1, N, action_dim), (K, N), (K, N), (N,), (N,)]
    steps = torch.arange(K, device=device)

    def initial_value(obs):
        """V(s, x_0, 0) with x_0 ~ prior: the value of an env state where the chain starts."""
        x_0 = args.prior_std * torch.randn(len(obs), action_dim, device=device)
        return critic(obs, x_0, torch.zeros(len(obs), dtype=torch.long, device=device))

    obs, _ = envs.reset(seed=args.seed)
    discounted_return = torch.zeros(N, dtype=torch.float64, device=device)
    global_step, recent_returns, next_eval, last_print, last_print_step = 0, [], args.eval_frequency, start_time, 0
    stop = []  # Ctrl-C or SIGTERM: finish the iteration, then save and exit; a second one exits at once
    for signum in (signal.SIGINT, signal.SIGTERM):  # the second signal raises KeyboardInterrupt
        signal.signal(signum, lambda signum, frame: signal.default_int_handler(signum, frame) if stop else stop.append(signum))
    for iteration in range(1, num_iterations + 1):
        final = iteration == num_iterations
        num_steps = args.num_steps + (leftover if final else 0)
        obs_buf, chain_buf, log_ratio_buf, values_buf, rewards_buf, dones_buf = (
            torch.zeros(num_steps, *shape, device=device) for shape in buffer_shapes
        )
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = frac * args.learning_rate, frac * eta_lr
        for step in range(num_steps):
            global_step += N
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)
            agent.obs_rms.update(obs_tensor)
            obs_norm = agent.obs_rms.normalize(obs_tensor)
            with torch.no_grad():
                action, chain, log_ratios = agent.policy.sample(obs_norm)  # K kernel calls, batched over the envs
                obs_k = obs_norm[:, None].expand(-1, K, -1).reshape(-1, obs_dim)  # the chain's K DA states
                values_buf[step] = critic(obs_k, chain[:, :-1].reshape(-1, action_dim), steps.repeat(N)).view(-1, K).T
            next_obs, rewards, terminations, truncations, infos = envs.step(to_env(action.cpu().numpy(), envs.single_action_space))
            obs_buf[step], chain_buf[step], log_ratio_buf[step] = obs_norm, chain.transpose(0, 1), log_ratios.T
            rewards = torch.as_tensor(rewards, device=device)
            dones = torch.as_tensor(terminations | truncations, dtype=torch.float32, device=device)
            if args.normalize_reward:
                discounted_return = discounted_return * args.gamma + rewards
                reward_rms.update(discounted_return)
                rewards = (rewards / torch.sqrt(reward_rms.var + 1e-8)).clamp(-10, 10)
                discounted_return = discounted_return * (1 - dones)
            # a truncated episode did not end: bootstrap its last step from the final observation, which SAME_STEP
            # autoreset keeps in infos["final_obs"] (next_obs holds the reset one)
            truncated = torch.as_tensor(truncations & ~terminations, device=device)
            if truncated.any():
                final_obs = next_obs.copy()
                final_obs[infos["_final_obs"]] = np.stack(infos["final_obs"][infos["_final_obs"]])
                with torch.no_grad():
                    final_obs = agent.obs_rms.normalize(torch.as_tensor(final_obs, dtype=torch.float32, device=device))
                    rewards = rewards + truncated * args.gamma * initial_value(final_obs)
            rewards_buf[step], dones_buf[step] = rewards.float(), dones
            for i in np.flatnonzero(infos.get("_final_info", [])):
                episode = infos["final_info"]["episode"]
                recent_returns = (recent_returns + [float(episode["r"][i])])[-10:]
                log_scalars(global_step, {"charts/episodic_return": float(episode["r"][i]), "charts/episodic_length": int(episode["l"][i])})
            obs = next_obs

        # GAE on the DA-MDP: K DA steps per env step, the env reward and discount only at k = K-1
        soft_rewards, da_dones, gammas, lambdas = da_mdp_sequence(
            rewards_buf, dones_buf, log_ratio_buf, args.ent_coef, args.gamma, args.gae_lambda
        )
        values = values_buf.reshape(-1, N)
        with torch.no_grad():
            last_value = initial_value(agent.obs_rms.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device)))
        advantages = compute_gae(soft_rewards, values, da_dones, last_value, gammas, lambdas)
        batch = {
            "obs": obs_buf[:, None].expand(-1, K, -1, -1).reshape(-1, obs_dim),
            "x": chain_buf[:, :-1].reshape(-1, action_dim),
            "k": steps[:, None].expand(-1, N).repeat(num_steps, 1).reshape(-1),
            "x_next": chain_buf[:, 1:].reshape(-1, action_dim),
        }
        batch |= {"values": values.reshape(-1), "advantages": advantages.reshape(-1)}
        batch["returns"] = (advantages + values).reshape(-1)
        with torch.no_grad():  # the old policy's log-density of every step of the rollout, in one call
            mean, std = agent.policy.kernel(batch["obs"], batch["x"], batch["k"])
            batch["log_prob"] = gaussian_log_prob(batch["x_next"], mean, std)

        # minibatches mix all DA steps; as many as PPO's, so each holds K times more samples
        clip_fractions = []
        for _ in range(args.update_epochs):
            for indices in torch.randperm(len(batch["obs"]), device=device).tensor_split(args.num_minibatches):
                minibatch = {key: value[indices] for key, value in batch.items()}
                pg_loss, ratio = policy_loss(agent.policy, minibatch, args.clip_coef, args.norm_adv, args.ent_coef)
                v_loss = value_loss(critic, minibatch, args.clip_coef, args.clip_vloss)
                loss = pg_loss + args.vf_coef * v_loss
                if not torch.isfinite(loss):  # the NaN guard: never keep training on a NaN or infinite loss
                    raise SystemExit(f"error: loss became {loss.item()} at env step {global_step}; stopping")
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(list(agent.parameters()) + list(critic.parameters()), args.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - ratio.log()).mean()  # the low-variance estimator of KL(old || new)
                    clip_fractions.append(((ratio - 1).abs() > args.clip_coef).float().mean().item())

        explained_variance = 1 - (batch["returns"] - batch["values"]).var() / batch["returns"].var()
        scalars = {"charts/learning_rate": optimizer.param_groups[0]["lr"], "losses/value_loss": v_loss.item()}
        scalars |= {"losses/policy_loss": pg_loss.item(), "losses/approx_kl": approx_kl.item()}
        scalars |= {"losses/clipfrac": float(np.mean(clip_fractions)), "losses/explained_variance": explained_variance.item()}
        scalars |= {"policy/eps": args.ent_coef, "diffusion/entropy": agent.policy.prior_entropy() - log_ratio_buf.sum(1).mean().item()}
        scalars["policy/saturated_fraction"] = (torch.tanh(chain_buf[:, -1]).abs() > 0.99).float().mean().item()
        scalars |= {f"diffusion/eta_{j}": eta_j.item() for j, eta_j in enumerate(agent.policy.eta().mean(-1))}
        log_scalars(global_step, scalars | {"charts/SPS": int(global_step / (time.time() - start_time))})

        if global_step >= next_eval or final:
            next_eval = (global_step // args.eval_frequency + 1) * args.eval_frequency
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
        nets = {"actor": agent.state_dict(), "critic": critic.state_dict(), "reward_rms": reward_rms.state_dict()}  # actor: with obs_rms
        torch.save({"script": os.path.basename(__file__), "env_steps": global_step, "args": asdict(args), **nets}, model_path)
        print(f"model saved to {model_path} at env step {global_step}")
    for resource in (envs, writer, metrics_file):
        resource.close()
    if stop:
        raise SystemExit(128 + stop[0])
