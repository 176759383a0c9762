"""DiffSAC: Soft Actor-Critic on the Diffusion-Augmented MDP (arXiv 2512.02019), diffusion policy.

Maximum-entropy RL maximises E[ sum_t gamma^t (r_t + alpha * H(pi(.|s_t))) ].
The policy is a K-step denoising chain in pre-tanh space R^A (docs/method.md, section 2) with a drift MLP u(s, x_k, k)
and step sizes eta_k learned in (0, eta_max) per step and dimension:

    x_0 ~ N(0, sigma_p^2 I),  q(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / sigma_p^2 + u(s, x_k, k)), 2 eta_k)
    a = tanh(x_K) in [-1, 1]^A (the env sees low + (a + 1) / 2 * (high - low))

log pi(a|s) of a chain has no closed form. Each step is compared with a noising kernel p that carries x_{k+1} back
towards the prior; the log ratios l_k give a lower bound H_hat of the entropy (its gap: KL of the chain given x_K to p):

    p(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k),   l_k = log q(x_{k+1}|x_k,s,k) - log p(x_k|x_{k+1})
    l_{K-1} also subtracts sum_d log(1 - tanh(x_{K,d})^2)    (the tanh correction, as in SAC; --no-tanh-correction drops it)
    H_hat = H_prior - E[sum_k l_k]  <=  H(pi(.|s)),  H_prior = A/2 log(2 pi e sigma_p^2) (the prior's entropy)

The DA-MDP (section 3) makes each denoising step an MDP step: state (s, x_k, k), action x_{k+1}, bonus -alpha * l_k;
only the env step k = K-1 also earns r and discounts, and each new chain's x_0 earns alpha * H_prior. SAC runs on it.
The buffer holds env transitions (s, a, r, s'). Each update draws one chain x'_0..x'_K of the current policy (no
gradient) at each replayed s', with log ratios l'_k and a' = tanh(x'_K). A batch row is the env step k = K-1 (share
--last-step-share) or an in-chain step k < K-1 (uniform). Q_i are Polyak-averaged into Qbar_i:

    row k = K-1    Q_i(s, a, K-1) <- y = r + gamma * (1 - terminated) * [ min_i Qbar_i(s', a', K-1) - alpha * (sum_j l'_j - H_prior) ]
    row k < K-1    Q_i(s', tanh(x'_{k+1}), k) <- y = min_i Qbar_i(s', a', K-1) - alpha * (l'_{k+1} + ... + l'_{K-1})
    actor loss     E[ alpha * l_k - min_i Q_i(s', tanh(x_{k+1}), k) ],  x_{k+1} ~ q(.|x'_k, s', k) reparameterised
    temperature    fixed by default; --autotune: loss alpha * stopgrad(H_hat - H_target),  H_target = -c * A (c: --target-entropy-scale)

An in-chain target is the rest of the same chain, the current policy's continuation from x'_{k+1} (no r or gamma inside
an env step), so only the env-step critic is bootstrapped. The actor's gradient goes through one kernel step per row,
never through the chain: an update costs K kernel calls without gradient and one with.

Run:  python diffsac.py --env-id Hopper-v5 --total-timesteps 100000
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
    """evaluate the policy every this many env steps"""
    eval_episodes: int = 5
    """the number of episodes of each evaluation"""
    eval_deterministic: bool = False
    """if toggled, evaluate the noise-free chain (x_0 = 0, every step takes the kernel mean)"""
    buffer_size: int = 1_000_000
    """the replay memory size (env transitions)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """Polyak coefficient of the target critics"""
    batch_size: int = 256
    """the minibatch size of each gradient update"""
    learning_starts: int = 5_000
    """env steps of warm-up before the first gradient update"""
    policy_lr: float = 3e-4
    """the learning rate of the policy and the temperature"""
    q_lr: float = 1e-3
    """the learning rate of the critics"""
    hidden_dim: int = 256
    """width of the hidden layers of every network"""
    alpha_init: float = 0.005  # below SAC's 0.1: H_hat's scale is set by the chain's KL to p, not by H(pi) alone
    """initial entropy temperature alpha"""
    autotune: bool = False  # off: H_hat falls further below H(pi) as the policy learns, so a fixed target keeps raising alpha
    """if toggled, alpha is tuned towards the entropy target"""
    target_entropy_scale: float = 4.0  # above SAC's 1: with --autotune, as H_hat lies several nats per dimension below H(pi)
    """c in the entropy target H_target = -c * action_dim"""
    diffusion_steps: int = 8
    """K, the number of denoising steps of the chain"""
    prior_std: float = 3.0
    """sigma_p, the std of the prior x_0 ~ N(0, sigma_p^2 I) in pre-tanh space"""
    last_step_share: float = 0.5
    """share of each batch's DA transitions at the env step k = K-1; the rest have k uniform below K-1"""
    eta_max: float = 1.0
    """upper bound of the learned step sizes eta_k (kernel std at most sqrt(2 eta_max))"""
    eta_lr: float | None = None
    """the learning rate of the step sizes eta_k (None: --policy-lr); a faster one lets the chain sharpen onto narrow optima"""
    tanh_correction: bool = True
    """if toggled, l_{K-1} includes tanh's log-det, so the entropy estimate is of the squashed action, as in SAC"""


# ============ PLUMBING: the env, input checks, the NaN guard ============
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
        positive = "total_timesteps eval_frequency buffer_size batch_size policy_lr q_lr hidden_dim alpha_init prior_std".split()
        rules += [(name, "must be positive", getattr(args, name) > 0) for name in positive]  # `> 0` also rejects NaN
        rules += [(name, "must lie in [0, 1]", 0 <= getattr(args, name) <= 1) for name in ("gamma", "tau")]
        rules += [(name, "must be at least 1", getattr(args, name) >= 1) for name in ("num_envs", "diffusion_steps")]
        rules += [("eta_lr", "must be positive", args.eta_lr is None or args.eta_lr > 0)]
        rules += [("last_step_share", "must lie strictly between 0 and 1", 0 < args.last_step_share < 1)]
        rules += [("eta_max", "must exceed 0.5, the first step's initial step size", args.eta_max > 0.5)]
    for name, rule, holds in rules:
        if not holds:
            raise SystemExit(f"error: --{name.replace('_', '-')} {rule}, got {getattr(args, name)}")
    if args.evaluate_checkpoint is None and args.total_timesteps <= max(args.learning_starts, args.batch_size):
        raise SystemExit(
            f"error: --total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts} "
            f"and --batch-size {args.batch_size}, or no gradient update would run"
        )


def real_next_obs(next_obs, infos):
    """The true s' of a SAME_STEP-autoreset vector step: a finished env's last observation is in infos["final_obs"]."""
    real = next_obs.copy()
    for i in np.flatnonzero(infos.get("_final_obs", [])):
        real[i] = infos["final_obs"][i]
    return real


def gradient_step(optimizer, loss, name=None, step=None):
    """One optimizer step on `loss`; a named loss that is NaN or infinite stops training instead (never train on it)."""
    if name is not None and not torch.isfinite(loss):
        raise SystemExit(f"error: {name} became {loss.item()} at env step {step}; stopping")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# ============ ALGORITHM: networks, policy, losses ============
def mlp(in_dim, out_dim, hidden_dim, layer_norm=False):
    """Two hidden ReLU layers; critics add LayerNorm for stability."""
    norm = (lambda: nn.LayerNorm(hidden_dim)) if layer_norm else nn.Identity
    hidden = [nn.Linear(in_dim, hidden_dim), norm(), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), norm(), nn.ReLU()]
    return nn.Sequential(*hidden, nn.Linear(hidden_dim, out_dim))


class SoftQNetwork(nn.Module):
    """Q(s, a, k), the soft value of choosing x_{k+1} at denoising step k, on a = tanh(x_{k+1}) (at k = K-1 the env's action).
    The bounded input keeps the actor from chasing the critic's extrapolation to large |x|."""

    def __init__(self, obs_dim, action_dim, hidden_dim, diffusion_steps):
        super().__init__()
        self.diffusion_steps = diffusion_steps
        self.net = mlp(obs_dim + action_dim + diffusion_steps, 1, hidden_dim, layer_norm=True)

    def forward(self, obs, action, k):
        return self.net(torch.cat([obs, action, F.one_hot(k, self.diffusion_steps).float()], -1)).squeeze(-1)


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


def make_actor(obs_dim, action_dim, args):
    """The policy of a run's Args (for training and for reloading a checkpoint)."""
    return DiffusionPolicy(obs_dim, action_dim, args.hidden_dim, args.diffusion_steps, args.prior_std, args.eta_max, args.tanh_correction)


class ReplayBuffer:
    """Fixed-size FIFO memory of env transitions (s, a, r, s', terminated)."""

    fields = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, size, obs_dim, action_shape, device):
        self.size, self.device, self.pos, self.full = size, device, 0, False
        for field, shape in zip(self.fields, [(obs_dim,), (obs_dim,), action_shape, (), ()], strict=True):
            setattr(self, field, np.zeros((size, *shape), np.float32))

    def add(self, obs, next_obs, actions, rewards, terminated):
        for i in range(len(obs)):
            for field, value in zip(self.fields, (obs, next_obs, actions, rewards, terminated), strict=True):
                getattr(self, field)[self.pos] = value[i]
            self.pos = (self.pos + 1) % self.size
            self.full = self.full or self.pos == 0

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size if self.full else self.pos, batch_size)
        return {field: torch.as_tensor(getattr(self, field)[idx], device=self.device) for field in self.fields}


def sample_steps(batch_size, diffusion_steps, last_step_share, device):
    """Denoising steps k of a batch of DA transitions: K-1 (the env step) with probability last_step_share, else uniform below."""
    share = 1.0 if diffusion_steps == 1 else last_step_share  # with K = 1 every row is the env step; max(., 1) keeps randint valid
    below = torch.randint(max(diffusion_steps - 1, 1), (batch_size,), device=device)
    return torch.where(torch.rand(batch_size, device=device) < share, diffusion_steps - 1, below)


def critic_target(batch, k, chain, log_ratios, actor, qf1_target, qf2_target, alpha, gamma):
    """Soft targets y of the rows (module docstring) from the current chain x'_0..x'_K at s' and its l'_0..l'_{K-1}. The chain
    is the current policy's own continuation from x'_{k+1}, so its rest is an unbiased sample for Q(s', tanh(x'_{k+1}), k):
    every target bootstraps only the env-step critic Qbar_i(s', a', K-1)."""
    with torch.no_grad():
        next_obs, next_action = batch["next_obs"], torch.tanh(chain[:, -1])
        k_last = torch.full_like(k, actor.diffusion_steps - 1)
        next_q = torch.min(qf1_target(next_obs, next_action, k_last), qf2_target(next_obs, next_action, k_last))
        env_target = batch["rewards"] + gamma * (1 - batch["terminated"]) * (next_q - alpha * (log_ratios.sum(-1) - actor.prior_entropy()))
        later_l = log_ratios.flip(-1).cumsum(-1).flip(-1) - log_ratios  # sum_{j>k} l'_j, (B, K)
        in_chain_target = next_q - alpha * later_l.gather(1, k[:, None]).squeeze(1)
        return torch.where(k == actor.diffusion_steps - 1, env_target, in_chain_target)


def critic_loss(batch, k, chain, log_ratios, actor, qf1, qf2, qf1_target, qf2_target, alpha, gamma):
    """sum_i mean (Q_i - y)^2 of Q_i(s, a, K-1) (env step) or Q_i(s', tanh(x'_{k+1}), k) (in the chain); also returns Q_1."""
    last = (k == actor.diffusion_steps - 1)[:, None]
    obs = torch.where(last, batch["obs"], batch["next_obs"])
    action = torch.where(last, batch["actions"], torch.tanh(chain[torch.arange(len(k), device=k.device), k + 1]))
    y = critic_target(batch, k, chain, log_ratios, actor, qf1_target, qf2_target, alpha, gamma)
    qf1_values = qf1(obs, action, k)
    return F.mse_loss(qf1_values, y) + F.mse_loss(qf2(obs, action, k), y), qf1_values


def actor_loss(batch, k, chain, actor, qf1, qf2, alpha):
    """E[alpha l_k(theta) - min_i Q_i(s', tanh(x_{k+1}(theta)), k)], one reparameterised kernel step from the chain's x'_k."""
    obs, x = batch["next_obs"], chain[torch.arange(len(k), device=k.device), k]
    x_next, l_k = actor.step(obs, x, k)
    action = torch.tanh(x_next)
    q = torch.min(qf1(obs, action, k), qf2(obs, action, k))
    return (alpha * l_k - q).mean()


def temperature_loss(log_alpha, entropy, target_entropy):
    """alpha * stopgrad(H_hat - H_target): gradient descent lowers alpha while the entropy is above its target."""
    return log_alpha.exp() * (entropy.detach() - target_entropy)


# ============ EVALUATION AND CHECKPOINTS ============
@torch.no_grad()
def evaluate(actor, env_id, episodes, seed, deterministic, device, video_dir=None):
    """Undiscounted returns of `episodes` episodes on a fresh env, episode i reset with seed + i."""
    env = gym.make(env_id, render_mode="rgb_array" if video_dir else None)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda _: True, disable_logger=True)
    returns = np.zeros(episodes)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the sampler noise: seeded by `seed` alone
        torch.manual_seed(seed)
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            terminated = truncated = False
            while not (terminated or truncated):
                obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                action = actor.sample(obs_tensor, deterministic, with_log_ratios=False)[0]
                obs, reward, terminated, truncated, _ = env.step(to_env(action[0].cpu().numpy(), env.action_space))
                returns[episode] += float(reward)
    env.close()
    return returns


def load_actor(path, device):
    """Rebuilds the actor of a checkpoint written by --save-model; returns it, the run's Args and its env steps."""
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
    actor = make_actor(env.observation_space.shape[0], env.action_space.shape[0], saved)
    actor.load_state_dict(checkpoint["actor"])
    return actor.to(device), saved, checkpoint["env_steps"]


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
        actor, saved, env_steps = load_actor(args.evaluate_checkpoint, device)
        returns = evaluate(actor, saved.env_id, args.eval_episodes, saved.seed + 10_000, args.eval_deterministic, device)
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

    env_fns = [lambda i=i: make_env(args.env_id, args.seed + i) for i in range(args.num_envs)]
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)  # see real_next_obs
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    actor = make_actor(obs_dim, action_dim, args).to(device)
    critics = [SoftQNetwork(obs_dim, action_dim, args.hidden_dim, args.diffusion_steps).to(device) for _ in range(4)]
    qf1, qf2, qf1_target, qf2_target = critics
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    eta_lr = args.policy_lr if args.eta_lr is None else args.eta_lr
    drift_params = [p for name, p in actor.named_parameters() if name != "eta_param"]
    actor_optimizer = torch.optim.Adam([{"params": drift_params}, {"params": [actor.eta_param], "lr": eta_lr}], lr=args.policy_lr)
    log_alpha = torch.tensor(np.log(args.alpha_init), dtype=torch.float32, device=device, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.policy_lr)
    target_entropy = -args.target_entropy_scale * action_dim

    rb = ReplayBuffer(args.buffer_size, obs_dim, (action_dim,), device)
    obs, _ = envs.reset(seed=args.seed)
    recent_returns, last_log, next_eval, last_print, last_print_step = [], 0, args.eval_frequency, start_time, 0
    num_iterations = args.total_timesteps // args.num_envs
    stop = []  # Ctrl-C or SIGTERM: finish the iteration, then save and exit; a second one exits at once
    for signum in (signal.SIGINT, signal.SIGTERM):  # the second signal raises KeyboardInterrupt
        signal.signal(signum, lambda signum, frame: signal.default_int_handler(signum, frame) if stop else stop.append(signum))
    for iteration in range(1, num_iterations + 1):
        global_step, final = iteration * args.num_envs, iteration == num_iterations
        if global_step <= args.learning_starts:
            actions = np.random.uniform(-1, 1, (args.num_envs, action_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                actions = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device), with_log_ratios=False)[0].cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(to_env(actions, envs.single_action_space))
        for i in np.flatnonzero(infos.get("_final_info", [])):
            episode = infos["final_info"]["episode"]
            recent_returns = (recent_returns + [float(episode["r"][i])])[-10:]
            log_scalars(global_step, {"charts/episodic_return": float(episode["r"][i]), "charts/episodic_length": int(episode["l"][i])})
        rb.add(obs, real_next_obs(next_obs, infos), actions, rewards, terminations)  # truncation keeps bootstrapping
        obs = next_obs

        if global_step > args.learning_starts:
            for _ in range(args.num_envs):  # one gradient update per env step
                batch = rb.sample(args.batch_size)
                alpha = log_alpha.exp().item()
                k = sample_steps(args.batch_size, args.diffusion_steps, args.last_step_share, device)
                with torch.no_grad():  # a sample of the current policy at the replayed s'
                    next_action, chain, log_ratios = actor.sample(batch["next_obs"])
                qf_loss, qf1_values = critic_loss(batch, k, chain, log_ratios, actor, qf1, qf2, qf1_target, qf2_target, alpha, args.gamma)
                gradient_step(q_optimizer, qf_loss, "qf_loss", global_step)
                policy_loss = actor_loss(batch, k, chain, actor, qf1, qf2, alpha)
                gradient_step(actor_optimizer, policy_loss, "actor_loss", global_step)
                entropy = actor.prior_entropy() - log_ratios.sum(-1).mean()  # H_hat, a lower bound of the action's entropy
                if args.autotune:
                    gradient_step(alpha_optimizer, temperature_loss(log_alpha, entropy, target_entropy))
                with torch.no_grad():
                    for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                        for param, target_param in zip(net.parameters(), target.parameters(), strict=True):
                            target_param.lerp_(param, args.tau)

            if global_step - last_log >= 1000:
                last_log = global_step
                scalars = {"losses/qf_loss": qf_loss.item() / 2, "losses/qf1_values": qf1_values.mean().item()}
                scalars |= {"losses/actor_loss": policy_loss.item(), "losses/alpha": log_alpha.exp().item()}
                scalars["diffusion/entropy"] = entropy.item()
                scalars["policy/saturated_fraction"] = (next_action.abs() > 0.99).float().mean().item()
                scalars |= {f"diffusion/eta_{j}": eta_j.item() for j, eta_j in enumerate(actor.eta().mean(-1))}
                log_scalars(global_step, scalars | {"charts/SPS": int(global_step / (time.time() - start_time))})

        if global_step >= next_eval or final:
            next_eval += args.eval_frequency
            video_dir = os.path.join(run_dir, "videos") if final and args.capture_video else None
            returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, args.eval_deterministic, device, video_dir)
            log_scalars(global_step, {"eval/episodic_return": float(returns.mean())})
            if final:
                print(f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes at env step {global_step}")

        if time.time() - last_print > 5 or final or global_step == args.learning_starts:
            sps = (global_step - last_print_step) / (time.time() - last_print)  # recent speed, for the time left
            last_print, last_print_step = time.time(), global_step
            recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
            time_left = f"{(args.total_timesteps - global_step) / max(sps, 1e-9) / 60:.1f} min"
            time_left = "n/a until learning starts" if global_step <= args.learning_starts else time_left  # no updates yet
            print(f"step {global_step}/{args.total_timesteps} | return {recent} | SPS {sps:.0f} | time left {time_left}", flush=True)

        if stop:
            print(f"interrupted at env step {global_step}: the run is unfinished", flush=True)
            break

    if args.save_model:
        model_path = os.path.join(run_dir, "model.pt")
        nets = {"actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(), "log_alpha": log_alpha.detach()}
        torch.save({"script": os.path.basename(__file__), "env_steps": global_step, "args": asdict(args), **nets}, model_path)
        print(f"model saved to {model_path} at env step {global_step}")
    for resource in (envs, writer, metrics_file):
        resource.close()
    if stop:
        raise SystemExit(128 + stop[0])
