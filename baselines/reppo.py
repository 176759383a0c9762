"""REPPO: Relative Entropy Pathwise Policy Optimization (arXiv 2507.11019), tanh-Gaussian policy.

The Gaussian twin of da_mdp_reppo.py. REPPO is on-policy like PPO (parallel envs, short rollouts, a few epochs of
minibatch updates, data then dropped), but its gradient is pathwise, through a soft Q learned from those rollouts alone:

    x ~ N(mu(s), sigma(s)^2),   a = low + (tanh(x) + 1) / 2 * (high - low),   log pi(a|s) with tanh's log-det
    critic target  soft TD(lambda), per rollout, a' ~ pi(.|s') sampled afresh at every next state:
                   G_t = r_t + gamma (1 - terminated_t) [ -alpha log pi(a'|s'_t) + lambda G_{t+1} + (1 - lambda) Q(s'_t, a') ]
                   (G_{t+1} := Q(s'_t, a') where the episode was truncated or the rollout ends)
    critic loss    cross-entropy of the categorical critic's logits to HL-Gauss(G), a Gaussian integrated over the value bins
    actor loss     per sample:  alpha log pi(a|s) - Q(s, a),  a ~ pi reparameterised,   while KL_i <= kl_bound
                                stopgrad(beta) KL_i,                                      otherwise
                   KL_i = KL(pi_old(.|s_i) || pi(.|s_i)), closed form for the two diagonal Gaussians
    temperature    loss alpha * stopgrad(H_hat - H_target),  H_hat = -mean(log pi),  H_target = -c A
    KL multiplier  loss -beta * stopgrad(mean KL - kl_bound): beta grows while the mean KL is over the bound

Observations are normalised by running statistics, saved with the policy; rewards are divided by the running std of the
discounted return, so the critic's range [-value_bound, value_bound] is in units of the task's own return scale.

Run:  python baselines/reppo.py --env-id Hopper-v5 --total-timesteps 1000000
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
    """if toggled, evaluate the mean action tanh(mu(s)) instead of sampling the policy"""
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
    alpha_init: float = 0.01
    """initial entropy temperature alpha"""
    autotune: bool = True
    """if toggled, alpha is tuned towards the entropy target"""
    target_entropy_scale: float = 0.5
    """c in the entropy target H_target = -c * action_dim"""
    kl_bound: float = 0.1
    """per-sample trust region: KL(pi_old || pi) above it switches the sample's loss to beta * KL"""
    beta_init: float = 0.3
    """initial KL Lagrange multiplier beta"""


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
        rules += [(name, "must be positive", getattr(args, name) > 0) for name in (positive + " kl_bound beta_init").split()]
        rules += [(name, "must lie in [0, 1]", 0 <= getattr(args, name) <= 1) for name in ("gamma", "td_lambda")]
        minimum = {"num_envs": 1, "num_steps": 1, "num_minibatches": 1, "update_epochs": 1, "num_bins": 2}
        rules += [(name, f"must be at least {low}", getattr(args, name) >= low) for name, low in minimum.items()]
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
    """Categorical Q(s, a) on the squashed action a in [-1, 1]^A: logits over value bins, Q = E[bin centre]."""

    def __init__(self, obs_dim, action_dim, hidden_dim, num_bins, value_bound):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, num_bins, hidden_dim, layer_norm=True)
        self.register_buffer("edges", torch.linspace(-value_bound, value_bound, num_bins + 1))

    def logits(self, obs, action):
        return self.net(torch.cat([obs, action], -1))

    def forward(self, *inputs):
        return torch.softmax(self.logits(*inputs), -1) @ ((self.edges[1:] + self.edges[:-1]) / 2)


class Actor(nn.Module):
    """tanh-Gaussian policy: x ~ N(mu(s), sigma(s)^2), squashed action tanh(x) in [-1, 1]^A."""

    def __init__(self, obs_dim, action_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, hidden_dim)

    def dist(self, obs):
        """Mean and std of the pre-tanh Gaussian; its log std is squashed into [-5, 2], as in CleanRL's SAC."""
        mean, log_std = self.net(obs).chunk(2, -1)
        return mean, (-5.0 + 3.5 * (torch.tanh(log_std) + 1)).exp()

    def log_prob(self, x, mean, std):
        """log pi(tanh(x)|s) = log N(x; mean, std) - sum_d log(1 - tanh(x_d)^2)."""
        log_det = 2 * (np.log(2.0) - x - F.softplus(-2 * x))  # log(1 - tanh(x)^2), in its numerically stable form
        return (torch.distributions.Normal(mean, std).log_prob(x) - log_det).sum(-1)

    def sample(self, obs, deterministic=False):
        """The squashed action tanh(x) and the pre-tanh sample x."""
        mean, std = self.dist(obs)
        x = mean if deterministic else mean + std * torch.randn_like(mean)
        return torch.tanh(x), x


def make_policy(obs_dim, action_dim, args):
    """The policy of a run's Args (for training and for reloading a checkpoint)."""
    return Actor(obs_dim, action_dim, args.hidden_dim)


class Agent(nn.Module):
    """The policy behind the running observation normaliser: sample() takes raw observations; both are saved together."""

    def __init__(self, obs_dim, policy):
        super().__init__()
        self.obs_norm, self.policy = ObservationNormalizer(obs_dim), policy

    def sample(self, obs, deterministic=False):
        return self.policy.sample(self.obs_norm(obs), deterministic)


def gaussian_kl(mean_old, std_old, mean, std):
    """KL(N(mean_old, std_old^2) || N(mean, std^2)) of diagonal Gaussians, summed over the last dim."""
    return (torch.log(std / std_old) + (std_old**2 + (mean_old - mean) ** 2) / (2 * std**2) - 0.5).sum(-1)


def td_lambda_targets(rewards, next_q, next_log_pi, terminated, truncated, alpha, gamma, td_lambda):
    """Soft TD(lambda) targets G (T, N) of one rollout (the module docstring's critic target), backwards in time.
    rewards, next_q, next_log_pi (log pi(a'|s'_t)), terminated and truncated are (T, N)."""
    targets = torch.zeros_like(rewards)
    for t in reversed(range(len(rewards))):
        continuation = next_q[t]
        if t + 1 < len(rewards):
            continuation = torch.where(truncated[t], next_q[t], td_lambda * targets[t + 1] + (1 - td_lambda) * next_q[t])
        targets[t] = rewards[t] + gamma * (1 - terminated[t]) * (continuation - alpha * next_log_pi[t])
    return targets


def critic_loss(batch, qf):
    """Cross-entropy of the critic's logits to the HL-Gauss distributions of the targets; also returns Q."""
    logits, target_probs = qf.logits(batch["obs"], torch.tanh(batch["x"])), hl_gauss(batch["targets"], qf.edges)
    q_values = torch.softmax(logits.detach(), -1) @ ((qf.edges[1:] + qf.edges[:-1]) / 2)
    return -(target_probs * F.log_softmax(logits, -1)).sum(-1).mean(), q_values


def actor_loss(batch, actor, qf, alpha, beta, kl_bound):
    """Per sample alpha log pi(a|s) - Q(s, a) (pathwise) inside the trust region, beta KL outside; returns it, log pi, KL."""
    obs = batch["obs"]
    mean, std = actor.dist(obs)
    x = mean + std * torch.randn_like(mean)
    log_pi = actor.log_prob(x, mean, std)
    kl = gaussian_kl(batch["mean"], batch["std"], mean, std)
    loss = torch.where(kl <= kl_bound, alpha * log_pi - qf(obs, torch.tanh(x)), beta * kl)
    return loss.mean(), log_pi, kl


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
    qf = SoftQNetwork(obs_dim, action_dim, args.hidden_dim, args.num_bins, args.value_bound).to(device)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.learning_rate)
    log_alpha = torch.tensor(np.log(args.alpha_init), dtype=torch.float32, device=device, requires_grad=True)
    log_beta = torch.tensor(np.log(args.beta_init), dtype=torch.float32, device=device, requires_grad=True)
    dual_optimizer = torch.optim.Adam([log_alpha, log_beta], lr=args.dual_learning_rate)
    target_entropy = -args.target_entropy_scale * action_dim
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
                actions, x = actor.sample(norm_obs)
            obs, rewards, terminations, truncations, infos = envs.step(to_env(actions.cpu().numpy(), envs.single_action_space))
            for i in np.flatnonzero(infos.get("_final_info", [])):
                episode = infos["final_info"]["episode"]
                recent_returns = (recent_returns + [float(episode["r"][i])])[-10:]
                log_scalars(global_step, {"charts/episodic_return": float(episode["r"][i]), "charts/episodic_length": int(episode["l"][i])})
            return_normalizer.update(rewards, terminations | truncations)
            # s' is normalised with the statistics s was normalised with, so Q(s') and Q(s) see one scale
            next_norm_obs = agent.obs_norm(torch.as_tensor(real_next_obs(obs, infos), dtype=torch.float32, device=device))
            rollout.append((norm_obs, x, rewards, terminations, truncations & ~terminations, next_norm_obs))
        columns = zip(("obs", "x", "rewards", "terminated", "truncated", "next_obs"), zip(*rollout, strict=True), strict=True)
        rollout = {key: torch.stack([torch.as_tensor(value, device=device) for value in values]) for key, values in columns}

        # --- the rollout's T * N transitions s -> x, with the old policy's means and stds ---
        alpha = log_alpha.exp().item()
        with torch.no_grad():
            data = {key: rollout[key].flatten(0, 1) for key in ("obs", "x")}
            data["mean"], data["std"] = actor.dist(data["obs"])
            # --- soft TD(lambda) targets, with a fresh a' ~ pi(.|s') at every next state ---
            next_mean, next_std = actor.dist(rollout["next_obs"])
            next_x = next_mean + next_std * torch.randn_like(next_mean)
            next_log_pi = actor.log_prob(next_x, next_mean, next_std)
            next_q = qf(rollout["next_obs"], torch.tanh(next_x))
            rewards = rollout["rewards"].float() / return_normalizer.scale()
            td_args = (rollout["terminated"].float(), rollout["truncated"], alpha, args.gamma, args.td_lambda)
            targets = td_lambda_targets(rewards, next_q, next_log_pi, *td_args)
        data["targets"] = targets.flatten()

        # --- update_epochs passes of minibatch updates: critic, then actor, then the two multipliers ---
        for _ in range(args.update_epochs):
            for indices in torch.randperm(len(data["targets"]), device=device).chunk(args.num_minibatches):
                batch = {key: value[indices] for key, value in data.items()}
                qf_loss, q_values = critic_loss(batch, qf)
                gradient_step("qf_loss", qf_loss, q_optimizer, qf.parameters(), args.max_grad_norm, global_step)
                alpha, beta = log_alpha.exp().item(), log_beta.exp().item()
                policy_loss, log_pi, kl = actor_loss(batch, actor, qf, alpha, beta, args.kl_bound)
                gradient_step("actor_loss", policy_loss, actor_optimizer, actor.parameters(), args.max_grad_norm, global_step)
                entropy = -log_pi.detach().mean()
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
        saturated = (data["x"].tanh().abs() > 0.99).float().mean().item()
        scalars |= {"policy/entropy": entropy.item(), "policy/saturated_fraction": saturated}
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
