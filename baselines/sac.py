"""SAC: Soft Actor-Critic with a tanh-Gaussian policy, the Gaussian twin of diffsac.py.

Maximum-entropy RL maximises E[ sum_t gamma^t (r_t + alpha * H(pi(.|s_t))) ].
SAC learns twin soft Q functions Q_i, Polyak-averaged into Qbar_i, and a reparameterised tanh-Gaussian policy:

    x ~ N(mu(s), sigma(s)^2),   a = tanh(x) in [-1, 1]^A (the env sees low + (a + 1) / 2 * (high - low))
    log pi(a|s) = log N(x; mu, sigma) - sum_d log(1 - tanh(x_d)^2)

    critic target  y = r + gamma * (1 - terminated) * [ min_i Qbar_i(s', a') - alpha * log pi(a'|s') ],  a' ~ pi(.|s')
    actor loss     E_s[ alpha * log pi(a|s) - min_i Q_i(s, a) ],  a ~ pi(.|s) reparameterised
    temperature    loss alpha * stopgrad(H_hat - H_target),  H_hat = -mean(log pi),  H_target = -c * A (c: --target-entropy-scale)

A is the number of action dimensions. `diff baselines/sac.py diffsac.py` shows what the diffusion chain changes.

Run:  python baselines/sac.py --env-id Hopper-v5 --total-timesteps 100000
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
    """if toggled, evaluate the mean action tanh(mu(s)) instead of sampling the policy"""
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
    alpha_init: float = 0.1
    """initial entropy temperature alpha"""
    autotune: bool = True
    """if toggled, alpha is tuned towards the entropy target"""
    target_entropy_scale: float = 1.0
    """c in the entropy target H_target = -c * action_dim"""


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
        positive = "total_timesteps eval_frequency buffer_size batch_size policy_lr q_lr hidden_dim alpha_init".split()
        rules += [(name, "must be positive", getattr(args, name) > 0) for name in positive]  # `> 0` also rejects NaN
        rules += [(name, "must lie in [0, 1]", 0 <= getattr(args, name) <= 1) for name in ("gamma", "tau")]
        rules += [(name, "must be at least 1", getattr(args, name) >= 1) for name in ("num_envs",)]
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
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # the range the Actor squashes its log std into


def mlp(in_dim, out_dim, hidden_dim, layer_norm=False):
    """Two hidden ReLU layers; critics add LayerNorm for stability."""
    norm = (lambda: nn.LayerNorm(hidden_dim)) if layer_norm else nn.Identity
    hidden = [nn.Linear(in_dim, hidden_dim), norm(), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), norm(), nn.ReLU()]
    return nn.Sequential(*hidden, nn.Linear(hidden_dim, out_dim))


class SoftQNetwork(nn.Module):
    """Q(s, a) on the squashed action a in [-1, 1]^A."""

    def __init__(self, obs_dim, action_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, 1, hidden_dim, layer_norm=True)

    def forward(self, obs, action):
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)


class Actor(nn.Module):
    """tanh-Gaussian policy: x ~ N(mu(s), sigma(s)^2), squashed action tanh(x) in [-1, 1]^A."""

    def __init__(self, obs_dim, action_dim, hidden_dim):
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, hidden_dim)

    def sample(self, obs, deterministic=False):
        """Returns the squashed action tanh(x) and log pi of it (reparameterised)."""
        mean, log_std = self.net(obs).chunk(2, -1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        dist = torch.distributions.Normal(mean, log_std.exp())
        x = mean if deterministic else dist.rsample()
        # log|d tanh(x)/dx| = 2 (log 2 - x - softplus(-2x)) per dimension, the numerically stable form of log(1 - tanh(x)^2)
        log_det = 2 * (np.log(2.0) - x - F.softplus(-2 * x))
        return torch.tanh(x), (dist.log_prob(x) - log_det).sum(-1)


def make_actor(obs_dim, action_dim, args):
    """The policy of a run's Args (for training and for reloading a checkpoint)."""
    return Actor(obs_dim, action_dim, args.hidden_dim)


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


def critic_target(batch, next_action, next_log_pi, qf1_target, qf2_target, alpha, gamma):
    """y = r + gamma * (1 - terminated) * [min_i Qbar_i(s', a') - alpha * log pi(a'|s')], given a' ~ pi(.|s') and log pi(a'|s')."""
    with torch.no_grad():
        next_q = torch.min(qf1_target(batch["next_obs"], next_action), qf2_target(batch["next_obs"], next_action))
        return batch["rewards"] + gamma * (1 - batch["terminated"]) * (next_q - alpha * next_log_pi)


def critic_loss(batch, next_action, next_log_pi, qf1, qf2, qf1_target, qf2_target, alpha, gamma):
    """sum_i mean (Q_i(s, a) - y)^2 over the batch of env transitions; also returns Q_1."""
    y = critic_target(batch, next_action, next_log_pi, qf1_target, qf2_target, alpha, gamma)
    qf1_values = qf1(batch["obs"], batch["actions"])
    return F.mse_loss(qf1_values, y) + F.mse_loss(qf2(batch["obs"], batch["actions"]), y), qf1_values


def actor_loss(batch, actor, qf1, qf2, alpha):
    """E[alpha * log pi(a|s) - min_i Q_i(s, a)] with a reparameterised; also returns log pi."""
    obs = batch["obs"]
    action, log_pi = actor.sample(obs)
    q = torch.min(qf1(obs, action), qf2(obs, action))
    return (alpha * log_pi - q).mean(), log_pi


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
                action = actor.sample(obs_tensor, deterministic)[0]
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
    critics = [SoftQNetwork(obs_dim, action_dim, args.hidden_dim).to(device) for _ in range(4)]
    qf1, qf2, qf1_target, qf2_target = critics
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
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
                actions = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()
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
                with torch.no_grad():  # a sample of the current policy at the replayed s'
                    next_action, next_log_pi = actor.sample(batch["next_obs"])
                qf_loss, qf1_values = critic_loss(batch, next_action, next_log_pi, qf1, qf2, qf1_target, qf2_target, alpha, args.gamma)
                gradient_step(q_optimizer, qf_loss, "qf_loss", global_step)
                policy_loss, log_pi = actor_loss(batch, actor, qf1, qf2, alpha)
                gradient_step(actor_optimizer, policy_loss, "actor_loss", global_step)
                entropy = -log_pi.detach().mean()
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
                scalars["policy/entropy"] = entropy.item()
                scalars["policy/saturated_fraction"] = (next_action.abs() > 0.99).float().mean().item()
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
