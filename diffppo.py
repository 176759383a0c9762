"""DiffPPO: PPO on the Diffusion-Augmented MDP (arXiv 2512.02019), diffusion policy.

The policy is a K-step denoising chain in pre-tanh space R^A (docs/method.md, sections 2-4):

    x_0 ~ N(0, sigma_p^2 I),  q(x_{k+1} | x_k, s, k) = N(x_k + eta_k (-x_k / sigma_p^2 + u(s, x_k, k)), 2 eta_k)
    a = low + (tanh(x_K) + 1) / 2 * (high - low),   step sizes eta_k in (0, eta_max) learned

log pi(a|s) of a chain is intractable. The one idea: make every denoising step a step of an
augmented MDP (the DA-MDP) with state (s, x_k, k) and action x_{k+1}, env reward and discount only
at k = K-1, and replace log pi by the per-step log ratio against the noising kernel p:

    p(x_k | x_{k+1}) = N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k),   l_k = log q(x_{k+1}|x_k,s,k) - log p(x_k|x_{k+1})
    l_{K-1} -= sum_d log(1 - tanh(x_K,d)^2)    (tanh correction; --no-tanh-correction drops it)

PPO then runs on the DA-MDP: a rollout of T env steps is T*K DA steps j = t*K + k, each with V(s, x_k, k):

    soft reward   r~_j = [k = K-1] r_t / std(discounted return) - eps * l_k
    GAE           delta_j = r~_j + gamma_j (1 - done_j) V_{j+1} - V_j,  A_j = delta_j + gamma_j lambda_j (1 - done_j) A_{j+1}
                  gamma_j, lambda_j, done_j: gamma, lambda, done_t at k = K-1; 1, 1, 0 inside the chain
    policy loss   E[max(-A rho, -A clip(rho, 1 - c, 1 + c)) - stopgrad(rho) eps log p_theta(x_k|x_{k+1})],
                  rho = q_theta(x_{k+1}|x_k,s,k) / q_old(x_{k+1}|x_k,s,k), one kernel step, never the whole chain
    value loss    0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)],  R = A + V_old

sigma_p = 1: under tanh, std 3 saturates 38% of the initial action coordinates and PPO's small bonus does not
undo it. V(s, x_k, k) is 256 wide (--critic-hidden-dim), the policy 64 wide, as in the twin: the value of a DA
state depends on x_k too (at k = K-1 it is nearly Q(s, a)). The measurements are in benchmarks/results.
Minibatches mix all T*K DA steps. A truncated env step adds gamma V(final observation, x_0 ~ prior, 0)
to its reward and ends the trace. Observation statistics live inside the policy (saved with it;
evaluation does not update them), rewards are scaled by the running std of the discounted return.

`diff baselines/ppo.py diffppo.py` shows exactly what changes from PPO.

Run:  python diffppo.py --env-id Hopper-v5 --total-timesteps 1000000
"""

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
    """the number of minibatches each epoch splits the rollout's num_steps * num_envs * K DA steps into"""
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
    """width of the hidden layers of the policy network u(s, x_k, k)"""
    critic_hidden_dim: int = 256
    """width of the hidden layers of the value network V(s, x_k, k) (CleanRL: 64; see the module docstring)"""
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


def to_env(squashed_action, space):
    """Maps tanh(x) in [-1, 1] to the env's bounds: a = low + (tanh(x) + 1) / 2 * (high - low)."""
    return space.low + (squashed_action + 1) / 2 * (space.high - space.low)


def make_env(env_id, seed):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def check_args(args):
    """Exit with one clear line on input that cannot train."""
    try:
        probe = gym.make(args.env_id)
    except Exception as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise SystemExit(f"error: cannot make --env-id {args.env_id!r}: {first_line}") from None
    if not isinstance(probe.action_space, gym.spaces.Box):
        raise SystemExit(
            f"error: --env-id {args.env_id!r} has action space {probe.action_space}; only continuous (Box) actions are supported"
        )
    probe.close()
    if not 0 <= args.seed < 2**31:
        raise SystemExit(f"error: --seed must lie in [0, 2**31), got {args.seed}")
    if args.eval_episodes < 1:
        raise SystemExit(f"error: --eval-episodes must be at least 1, got {args.eval_episodes}")
    if args.evaluate_checkpoint is not None:
        return
    for name in "total_timesteps eval_frequency learning_rate clip_coef max_grad_norm prior_std".split():
        if not getattr(args, name) > 0:  # also rejects NaN
            raise SystemExit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in "gamma gae_lambda".split():
        if not 0 <= getattr(args, name) <= 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    if args.diffusion_steps < 1:
        raise SystemExit(f"error: --diffusion-steps must be at least 1, got {args.diffusion_steps}")
    if args.eta_lr is not None and args.eta_lr <= 0:
        raise SystemExit(f"error: --eta-lr must be positive, got {args.eta_lr}")
    if args.eta_max <= 0.5:
        raise SystemExit(f"error: --eta-max must exceed 0.5, the first step's initial step size, got {args.eta_max}")
    if min(args.hidden_dim, args.critic_hidden_dim) < 1:
        raise SystemExit(
            f"error: --hidden-dim and --critic-hidden-dim must be at least 1, got {args.hidden_dim} and {args.critic_hidden_dim}"
        )
    if min(args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs) < 1:
        raise SystemExit("error: --num-envs, --num-steps, --num-minibatches and --update-epochs must be at least 1")
    if 2 * args.num_minibatches > args.num_steps * args.num_envs:
        raise SystemExit(
            f"error: --num-minibatches {args.num_minibatches} leaves fewer than 2 of the rollout's {args.num_steps * args.num_envs} "
            "env steps per minibatch"
        )
    if args.total_timesteps < args.num_steps * args.num_envs:
        raise SystemExit(
            f"error: --total-timesteps {args.total_timesteps} is smaller than one rollout "
            f"(--num-steps {args.num_steps} x --num-envs {args.num_envs}), so no gradient update would run"
        )


def real_next_obs(next_obs, infos):
    """True next observations of a vector env step with SAME_STEP autoreset.

    A finished env already returns its reset observation; the episode's last one is in
    infos["final_obs"]. A truncated episode is bootstrapped from it.
    """
    real = next_obs.copy()
    for i in np.flatnonzero(infos.get("_final_obs", [])):
        real[i] = infos["final_obs"][i]
    return real


def check_finite(name, value, step):
    """Stop training on a NaN or infinite loss (never keep training on it)."""
    if not torch.isfinite(value):
        raise SystemExit(f"error: {name} became {value.item()} at env step {step}; stopping")


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


def mlp(in_dim, out_dim, hidden_dim, last_std):
    """Two hidden tanh layers with orthogonal initialisation (CleanRL's layer_init); the last layer's gain is last_std."""
    layers = [nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, out_dim)]
    for layer, gain in zip(layers[::2], (np.sqrt(2), np.sqrt(2), last_std), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def gaussian_log_prob(y, mean, std):
    """log N(y; mean, diag(std^2)), summed over the last dimension."""
    return (-((y - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)


def tanh_log_det(x):
    """log|d tanh(x)/dx| = sum_d log(1 - tanh(x_d)^2) = sum_d 2 (log 2 - x_d - softplus(-2 x_d)), numerically stable."""
    return 2 * (np.log(2.0) - x - F.softplus(-2 * x)).sum(-1)


class ValueNetwork(nn.Module):
    """V(s, x_k, k): the soft value of the DA state, denoising step k with x_k (k = 0: x_0 from the prior)."""

    def __init__(self, obs_dim, action_dim, hidden_dim, diffusion_steps):
        super().__init__()
        self.diffusion_steps = diffusion_steps
        self.net = mlp(obs_dim + action_dim + diffusion_steps, 1, hidden_dim, last_std=1.0)

    def forward(self, obs, x, k):
        return self.net(torch.cat([obs, x, F.one_hot(k, self.diffusion_steps).float()], -1)).squeeze(-1)


class DiffusionPolicy(nn.Module):
    """K-step denoising chain x_0 -> x_K in pre-tanh space; the squashed action is tanh(x_K) in [-1, 1]^A."""

    def __init__(self, obs_dim, action_dim, hidden_dim, diffusion_steps, prior_std, eta_max, tanh_correction):
        super().__init__()
        self.action_dim, self.diffusion_steps, self.prior_std = action_dim, diffusion_steps, prior_std
        self.eta_max, self.tanh_correction = eta_max, tanh_correction
        self.obs_rms = RunningMeanStd((obs_dim,))
        # u starts at zero: the initial chain is an Ornstein-Uhlenbeck chain that keeps x about N(0, sigma_p^2)
        self.net = mlp(obs_dim + action_dim + diffusion_steps, action_dim, hidden_dim, last_std=0.0)
        # eta_k = 0.5 * sched(k), sched(k) = 0.17 + 0.83 (K - k) / K, learned per (step, dim) in (0, eta_max)
        steps = torch.arange(diffusion_steps, dtype=torch.float32)
        eta = 0.5 * (0.17 + 0.83 * (diffusion_steps - steps) / diffusion_steps)
        self.eta_param = nn.Parameter(torch.logit(eta / eta_max)[:, None].repeat(1, action_dim))

    def eta(self):
        """Step sizes eta_k = eta_max * sigmoid(param), shape (K, A)."""
        return self.eta_max * torch.sigmoid(self.eta_param)

    def kernel(self, obs, x, k):
        """Mean and std of the denoising kernel q(x_{k+1} | x_k, s, k) on the normalised observation."""
        eta = self.eta()[k]
        u = self.net(torch.cat([obs, x, F.one_hot(k, self.diffusion_steps).float()], -1))
        return x + eta * (-x / self.prior_std**2 + u), torch.sqrt(2 * eta)

    def reverse_log_prob(self, x, x_next, std):
        """log p(x_k | x_{k+1}) of the noising kernel N(x_{k+1} - eta_k x_{k+1} / sigma_p^2, 2 eta_k), std = sqrt(2 eta_k)."""
        # p is normalised in x_k (drift at x_{k+1}, the same eta_k as q), so l_k is a true log density ratio;
        # the authors' code evaluates the drift at x_k with eta_{k+1} (docs/method.md, section 2)
        return gaussian_log_prob(x, x_next - (std**2 / 2) * x_next / self.prior_std**2, std)

    def log_ratio(self, x, k, x_next, log_q, std):
        """l_k = log q(x_{k+1} | x_k, s, k) - log p(x_k | x_{k+1}), given log q and q's std."""
        l_k = log_q - self.reverse_log_prob(x, x_next, std)
        if self.tanh_correction:
            # at the last step subtract log|d tanh(x_K)/dx_K|: the bonus is of the squashed action, as PPO's log pi
            l_k = l_k - torch.where(k == self.diffusion_steps - 1, tanh_log_det(x_next), 0.0)
        return l_k

    def act(self, obs, deterministic=False):
        """The whole chain on the normalised observation: x_0..x_K (B, K+1, A), log q and l_k of every step (B, K)."""
        x = torch.zeros(obs.shape[0], self.action_dim, device=obs.device)
        if not deterministic:
            x = self.prior_std * torch.randn_like(x)
        chain, means, stds = [x], [], []
        for k in range(self.diffusion_steps):
            mean, std = self.kernel(obs, x, torch.full((obs.shape[0],), k, device=obs.device))
            x = mean if deterministic else mean + std * torch.randn_like(mean)
            chain.append(x)
            means.append(mean)
            stds.append(std)
        # the densities of all K steps in one batched call (the loop above only samples)
        chain, mean, std = torch.stack(chain, 1), torch.stack(means, 1), torch.stack(stds, 1)
        log_q = gaussian_log_prob(chain[:, 1:], mean, std)
        steps = torch.arange(self.diffusion_steps, device=obs.device)
        return chain, log_q, self.log_ratio(chain[:, :-1], steps, chain[:, 1:], log_q, std)

    def sample(self, obs, deterministic=False):
        """From a raw observation (normalised here with the frozen statistics): tanh(x_K) and the chain x_0..x_K."""
        chain, _, _ = self.act(self.obs_rms.normalize(obs), deterministic)
        return torch.tanh(chain[:, -1]), chain


def da_mdp_sequence(env_rewards, env_dones, log_ratio, ent_coef, gamma, gae_lambda):
    """The rollout as a DA-MDP sequence, DA time j = t*K + k (docs/method.md, section 3).

    env_rewards, env_dones (T, N) and log_ratio (T, K, N) in; out (T*K, N) soft rewards and dones, (T*K, 1) gamma_j and lambda_j:
    the env reward and the episode end only at k = K-1, the bonus -eps l_k at every step, gamma and lambda only
    where env time advances (k = K-1), 1 inside the chain.
    """
    num_steps, diffusion_steps, num_envs = log_ratio.shape
    soft_rewards = -ent_coef * log_ratio
    soft_rewards[:, -1] += env_rewards
    dones = torch.zeros_like(soft_rewards)
    dones[:, -1] = env_dones
    last_step = (torch.arange(diffusion_steps, device=log_ratio.device) == diffusion_steps - 1).float()
    gammas = (1 + last_step * (gamma - 1)).repeat(num_steps)[:, None]
    lambdas = (1 + last_step * (gae_lambda - 1)).repeat(num_steps)[:, None]
    flat = (num_steps * diffusion_steps, num_envs)
    return soft_rewards.reshape(flat), dones.reshape(flat), gammas, lambdas


def compute_gae(rewards, values, dones, last_value, gamma, gae_lambda):
    """GAE over a DA rollout of shape (T*K, N): A_j = delta_j + gamma_j lambda_j (1 - done_j) A_{j+1}.

    delta_j = r_j + gamma_j (1 - done_j) V_{j+1} - V_j, with V_{T*K} = last_value; gamma_j and lambda_j are
    per DA step (T*K, 1): gamma and lambda where env time advances (k = K-1), 1 inside the chain (docs/method.md, section 3).
    """
    not_done = 1.0 - dones
    deltas = rewards + gamma * not_done * torch.cat([values[1:], last_value[None]]) - values
    decay = (gamma * gae_lambda * not_done).cpu().numpy()
    advantages = deltas.cpu().numpy()
    for t in reversed(range(len(advantages) - 1)):  # the only sequential part, on numpy: fast for long DA rollouts
        advantages[t] += decay[t] * advantages[t + 1]
    return torch.as_tensor(advantages, device=rewards.device)


def policy_loss(actor, batch, clip_coef, norm_adv, ent_coef):
    """Clipped surrogate on the one-step kernel ratio plus the reference-kernel term; also returns rho."""
    mean, std = actor.kernel(batch["obs"], batch["x"], batch["k"])
    ratio = (gaussian_log_prob(batch["x_next"], mean, std) - batch["log_prob"]).exp()
    advantages, scale = batch["advantages"], 1.0
    if norm_adv:
        scale = advantages.std() + 1e-8
        advantages = (advantages - advantages.mean()) / scale
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    # The reference-kernel term (docs/method.md, section 4). The bonus -eps l_k = -eps log q + eps log p has a part,
    # eps log p(x_k|x_{k+1}), that depends on theta through eta_k besides the sample: d/dtheta E_q[eps log p_theta]
    # = (score-function part, in A) + E_q_old[rho eps d log p_theta / dtheta]. Gradient descent on
    # -stopgrad(rho) eps log p_theta ascends it; divided by the advantages' scale to stay in their units, and
    # kept only where the surrogate passes its gradient (not clipped), as the reference does.
    not_clipped = (unclipped >= clipped).float()
    reference_term = -ratio.detach() * ent_coef * actor.reverse_log_prob(batch["x"], batch["x_next"], std) / scale * not_clipped
    return (torch.max(unclipped, clipped) + reference_term).mean(), ratio


def value_loss(critic, batch, clip_coef, clip_vloss):
    """0.5 E[(V - R)^2], clipped around the rollout's values like the policy objective when clip_vloss."""
    new_value = critic(batch["obs"], batch["x"], batch["k"])
    loss = (new_value - batch["returns"]) ** 2
    if clip_vloss:
        clipped_value = batch["values"] + (new_value - batch["values"]).clamp(-clip_coef, clip_coef)
        loss = torch.max(loss, (clipped_value - batch["returns"]) ** 2)
    return 0.5 * loss.mean()


def evaluate(actor, env_id, episodes, seed, deterministic, device, video_dir=None):
    """Undiscounted returns of `episodes` episodes, env and sampler seeded seed, seed+1, ...; observation statistics frozen."""
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
                with torch.no_grad():
                    action, _ = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], deterministic)
                obs, reward, terminated, truncated, _ = env.step(to_env(action[0].cpu().numpy(), env.action_space))
                episode_return += float(reward)
                done = terminated or truncated
            returns.append(episode_return)
    env.close()
    return np.array(returns)


def load_actor(path, device):
    """Rebuilds the actor (with its observation statistics) of a checkpoint written by --save-model; returns it and the run's Args."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # missing, unreadable, or not a torch file
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise SystemExit(f"error: cannot load --evaluate-checkpoint {path}: {first_line}") from None
    script = os.path.basename(__file__)
    written_by = checkpoint.get("script", "another program") if isinstance(checkpoint, dict) else "another program"
    if written_by != script:
        raise SystemExit(f"error: --evaluate-checkpoint {path} was written by {written_by}, not by {script}")
    saved = Args(**checkpoint["args"])
    env = gym.make(saved.env_id)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor = DiffusionPolicy(
        obs_dim, action_dim, saved.hidden_dim, saved.diffusion_steps, saved.prior_std, saved.eta_max, saved.tanh_correction
    )
    actor.load_state_dict(checkpoint["actor"])
    return actor.to(device), saved, checkpoint["env_steps"]


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and not torch.cuda.is_available():
        print("--cuda: no GPU is visible, so the run uses the CPU")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    if args.evaluate_checkpoint is not None:
        actor, saved, env_steps = load_actor(args.evaluate_checkpoint, device)
        returns = evaluate(actor, saved.env_id, args.eval_episodes, saved.seed + 10_000, args.eval_deterministic, device)
        print(f"{saved.env_id}: eval returns {np.round(returns, 2).tolist()}")
        print(f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes at env step {env_steps}")
        raise SystemExit(0)

    run_name = f"{args.env_id.replace(':', '_').replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join("runs", run_name)
    for copy in range(2, 1000):  # a run started in the same second under the same name gets its own folder, name_2...
        try:
            os.makedirs(run_dir)
            break
        except FileExistsError:
            run_dir = os.path.join("runs", f"{run_name}_{copy}")
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

    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    diffusion_steps = args.diffusion_steps
    actor = DiffusionPolicy(obs_dim, action_dim, args.hidden_dim, diffusion_steps, args.prior_std, args.eta_max, args.tanh_correction).to(
        device
    )
    critic = ValueNetwork(obs_dim, action_dim, args.critic_hidden_dim, diffusion_steps).to(device)
    eta_lr = args.learning_rate if args.eta_lr is None else args.eta_lr
    other_params = [p for name, p in actor.named_parameters() if name != "eta_param"] + list(critic.parameters())
    optimizer = torch.optim.Adam([{"params": other_params}, {"params": [actor.eta_param], "lr": eta_lr}], lr=args.learning_rate, eps=1e-5)
    reward_rms = RunningMeanStd().to(device)

    # rollout storage, one row per env step; the per-step quantities of the chain have a K axis
    N = args.num_envs
    env_steps_per_env = args.total_timesteps // N
    num_iterations = env_steps_per_env // args.num_steps
    leftover = env_steps_per_env % args.num_steps  # the last rollout also takes the steps left over
    max_steps = args.num_steps + leftover
    obs_buf = torch.zeros(max_steps, N, obs_dim, device=device)
    chain_buf = torch.zeros(max_steps, diffusion_steps + 1, N, action_dim, device=device)
    log_prob_buf = torch.zeros(max_steps, diffusion_steps, N, device=device)
    log_ratio_buf = torch.zeros(max_steps, diffusion_steps, N, device=device)
    values_buf = torch.zeros(max_steps, diffusion_steps, N, device=device)
    rewards_buf = torch.zeros(max_steps, N, device=device)
    dones_buf = torch.zeros(max_steps, N, device=device)
    steps = torch.arange(diffusion_steps, device=device)

    def values_of_chain(obs, chain):
        """V(s, x_k, k) for k = 0..K-1 of chains (N, K+1, A) in one batched call; shape (K, N)."""
        obs = obs[:, None].expand(-1, diffusion_steps, -1).reshape(-1, obs_dim)
        values = critic(obs, chain[:, :-1].reshape(-1, action_dim), steps.repeat(len(chain)))
        return values.view(-1, diffusion_steps).T

    def initial_value(obs):
        """V(s, x_0, 0) with x_0 ~ prior: the value of an env state where the chain starts."""
        x_0 = args.prior_std * torch.randn(len(obs), action_dim, device=device)
        return critic(obs, x_0, torch.zeros(len(obs), dtype=torch.long, device=device))

    obs, _ = envs.reset(seed=args.seed)
    discounted_return = torch.zeros(N, dtype=torch.float64, device=device)
    global_step, recent_returns, next_eval = 0, [], args.eval_frequency
    last_print, last_print_step = start_time, 0
    stop = []  # Ctrl-C or SIGTERM: finish the iteration, then save and exit; a second one exits at once

    def request_stop(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for iteration in range(1, num_iterations + 1):
        num_steps = args.num_steps + (leftover if iteration == num_iterations else 0)
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = frac * args.learning_rate, frac * eta_lr

        for step in range(num_steps):
            global_step += N
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)
            actor.obs_rms.update(obs_tensor)
            obs_norm = actor.obs_rms.normalize(obs_tensor)
            with torch.no_grad():
                chain, log_prob, log_ratio = actor.act(obs_norm)  # K kernel calls, batched over the envs
                values_buf[step] = values_of_chain(obs_norm, chain)
            next_obs, rewards, terminations, truncations, infos = envs.step(
                to_env(torch.tanh(chain[:, -1]).cpu().numpy(), envs.single_action_space)
            )
            obs_buf[step], chain_buf[step] = obs_norm, chain.transpose(0, 1)
            log_prob_buf[step], log_ratio_buf[step] = log_prob.T, log_ratio.T

            rewards = torch.as_tensor(rewards, device=device)
            dones = torch.as_tensor(terminations | truncations, dtype=torch.float32, device=device)
            if args.normalize_reward:
                discounted_return = discounted_return * args.gamma + rewards
                reward_rms.update(discounted_return)
                rewards = (rewards / torch.sqrt(reward_rms.var + 1e-8)).clamp(-10, 10)
                discounted_return = discounted_return * (1 - dones)
            # a truncated episode did not end: bootstrap its last step from the final observation
            truncated = torch.as_tensor(truncations & ~terminations, device=device)
            if truncated.any():
                final_obs = torch.as_tensor(real_next_obs(next_obs, infos), dtype=torch.float32, device=device)
                with torch.no_grad():
                    rewards = rewards + truncated * args.gamma * initial_value(actor.obs_rms.normalize(final_obs))
            rewards_buf[step] = rewards.float()
            dones_buf[step] = dones

            for i in np.flatnonzero(infos.get("_final_info", [])):
                episode = infos["final_info"]["episode"]
                recent_returns = (recent_returns + [float(episode["r"][i])])[-10:]
                log_scalars(global_step, {"charts/episodic_return": float(episode["r"][i]), "charts/episodic_length": int(episode["l"][i])})
            obs = next_obs

        # GAE on the DA-MDP: K DA steps per env step, the env reward and discount only at k = K-1
        soft_rewards, da_dones, gammas, lambdas = da_mdp_sequence(
            rewards_buf[:num_steps], dones_buf[:num_steps], log_ratio_buf[:num_steps], args.ent_coef, args.gamma, args.gae_lambda
        )
        values = values_buf[:num_steps].reshape(-1, N)
        with torch.no_grad():
            last_value = initial_value(actor.obs_rms.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device)))
        advantages = compute_gae(soft_rewards, values, da_dones, last_value, gammas, lambdas)
        batch = {
            "obs": obs_buf[:num_steps, None].expand(-1, diffusion_steps, -1, -1).reshape(-1, obs_dim),
            "x": chain_buf[:num_steps, :-1].reshape(-1, action_dim),
            "k": steps[:, None].expand(-1, N).repeat(num_steps, 1).reshape(-1),
            "x_next": chain_buf[:num_steps, 1:].reshape(-1, action_dim),
            "log_prob": log_prob_buf[:num_steps].reshape(-1),
            "values": values.reshape(-1),
            "advantages": advantages.reshape(-1),
            "returns": (advantages + values).reshape(-1),
        }

        # minibatches mix all DA steps; as many as PPO's, so each holds K times more samples
        batch_size = num_steps * diffusion_steps * N
        clip_fractions = []
        for _ in range(args.update_epochs):
            for indices in torch.randperm(batch_size, device=device).tensor_split(args.num_minibatches):
                minibatch = {key: value[indices] for key, value in batch.items()}
                pg_loss, ratio = policy_loss(actor, minibatch, args.clip_coef, args.norm_adv, args.ent_coef)
                v_loss = value_loss(critic, minibatch, args.clip_coef, args.clip_vloss)
                loss = pg_loss + args.vf_coef * v_loss
                check_finite("loss", loss, global_step)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(list(actor.parameters()) + list(critic.parameters()), args.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - ratio.log()).mean()  # the low-variance estimator of KL(old || new)
                    clip_fractions.append(((ratio - 1).abs() > args.clip_coef).float().mean().item())

        explained_variance = 1 - (batch["returns"] - batch["values"]).var() / batch["returns"].var()
        log_scalars(
            global_step,
            {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": float(np.mean(clip_fractions)),
                "losses/explained_variance": explained_variance.item(),
                "diffusion/eps": args.ent_coef,
                "diffusion/entropy": -log_ratio_buf[:num_steps].sum(1).mean().item(),  # -sum_k l_k, per env step
                "diffusion/saturated_fraction": (torch.tanh(chain_buf[:num_steps, -1]).abs() > 0.99).float().mean().item(),
                **{f"diffusion/eta_{j}": eta_j.item() for j, eta_j in enumerate(actor.eta().mean(-1))},
                "charts/SPS": int(global_step / (time.time() - start_time)),
            },
        )

        if global_step >= next_eval or iteration == num_iterations:
            next_eval = (global_step // args.eval_frequency + 1) * args.eval_frequency
            final = iteration == num_iterations
            video_dir = os.path.join(run_dir, "videos") if final and args.capture_video else None
            returns = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, args.eval_deterministic, device, video_dir)
            log_scalars(global_step, {"eval/episodic_return": float(returns.mean())})
            if final:
                print(f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes at env step {global_step}")

        if time.time() - last_print > 5 or iteration == num_iterations:
            sps = (global_step - last_print_step) / (time.time() - last_print)  # recent speed, for the time left
            last_print, last_print_step = time.time(), global_step
            recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
            time_left = (args.total_timesteps - global_step) / max(sps, 1e-9)
            print(
                f"step {global_step}/{args.total_timesteps} | return {recent} | SPS {sps:.0f} | time left {time_left / 60:.1f} min",
                flush=True,
            )

        if stop:
            print(f"interrupted at env step {global_step}: the run is unfinished", flush=True)
            break

    if args.save_model:
        model_path = os.path.join(run_dir, "model.pt")
        torch.save(
            {
                "script": os.path.basename(__file__),
                "env_steps": global_step,
                "args": asdict(args),
                "actor": actor.state_dict(),  # includes the observation statistics obs_rms.{mean, var, count}
                "critic": critic.state_dict(),
                "reward_rms": reward_rms.state_dict(),
            },
            model_path,
        )
        print(f"model saved to {model_path} at env step {global_step}")
    envs.close()
    writer.close()
    metrics_file.close()
    if stop:
        raise SystemExit(128 + stop[0])
