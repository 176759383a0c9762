"""How noisy is a trained diffusion policy, which denoising step the noise comes from, and how loose its entropy bound is.

For states visited by the policy, the chain is run `--samples` times per state and the spread of x_K given s
is measured three ways: with all noise, with kernel noise only (x_0 = 0) and with prior noise only (every step
takes its kernel mean). Then, for each step j, with the noise of step j alone: a step whose noise the later
steps' drift contracts adds little; the twin's counterpart is its std (policy/std in PPO's logs).

    python diffwpo.py --env-id HalfCheetah-v5 --total-timesteps 131072 --save-model
    python benchmarks/chain_noise.py --script diffwpo.py --checkpoint runs/RUN/model.pt

std(x_K|s) is in pre-tanh units, averaged over states and action dims; std(tanh|s) is the same in [-1, 1].
Last, the entropy of the squashed action given s, estimated from the samples by nearest neighbours, next to the
chain's own lower bound H_hat = H_prior - sum_k l_k at the same states: their difference is the bound's gap.
"""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


def load_script(path):
    """Imports a diffusion script as a module (its training code runs only under __main__)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split(actor):
    """The diffusion policy and the observation normalisation of what a script's load_actor returns: an Agent holding
    the normaliser (obs_norm: DA-MDP REPPO, DiffWPO; obs_rms: DiffPPO) and the policy, or the policy alone (DiffSAC)."""
    if hasattr(actor, "obs_norm"):
        return actor.policy, actor.obs_norm
    if hasattr(actor, "obs_rms"):
        return actor.policy, actor.obs_rms.normalize
    return actor, lambda obs: obs


@torch.no_grad()
def chain_end(policy, obs_norm, samples, prior_noise=True, kernel_noise=True, only_step=None):
    """x_K for `samples` chains per normalised state, shape (S, samples, A).

    prior_noise: x_0 ~ N(0, sigma_p^2) (else 0); kernel_noise: every step samples its kernel (else takes the mean);
    only_step=j: only step j samples (overrides kernel_noise).
    """
    obs = obs_norm.repeat_interleave(samples, 0)
    x = torch.zeros(len(obs), policy.action_dim)
    if prior_noise:
        x = policy.prior_std * torch.randn_like(x)
    for k in range(policy.diffusion_steps):
        mean, std = policy.kernel(obs, x, torch.full((len(obs),), k, dtype=torch.long))
        noisy = (k == only_step) if only_step is not None else kernel_noise
        x = mean + std * torch.randn_like(mean) if noisy else mean
    return x.view(len(obs_norm), samples, -1)


def spread(x):
    """Mean over states and dims of the std over samples, in pre-tanh and tanh units; the saturated fraction."""
    return x.std(1).mean().item(), x.tanh().std(1).mean().item(), (x.tanh().abs() > 0.99).float().mean().item()


def knn_entropy(x, k=5):
    """Kozachenko-Leonenko estimate of the differential entropy (nats) of the rows of x (N, d), from each row's distance
    to its k-th nearest neighbour: H = psi(N) - psi(k) + log V_d + d mean(log eps_i), V_d the unit ball's volume."""
    n, d = x.shape
    distance = torch.cdist(x, x)
    distance.fill_diagonal_(float("inf"))
    eps = distance.topk(k, largest=False).values[:, -1]
    digamma = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    log_ball = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    return (digamma[0] - digamma[1]).item() + log_ball + d * eps.log().mean().item()


@torch.no_grad()
def entropy_and_bound(policy, obs_norm, samples):
    """Mean over states of the k-NN entropy of tanh(x_K) given s and of the chain's bound H_hat at s."""
    estimates, bounds = [], []
    for state in obs_norm:
        _, chain, log_ratios = policy.sample(state[None].repeat(samples, 1))
        estimates.append(knn_entropy(chain[:, -1].double().tanh()))  # tanh in float64: saturated samples stay distinct
        bounds.append(policy.prior_entropy() - log_ratios.sum(-1).mean().item())
    return float(np.mean(estimates)), float(np.mean(bounds))


def visited_states(actor, module, env_id, steps, every, seed, random_actions=False):
    """Raw observations from one stochastic run of the policy (or of uniform random actions), one every `every` env steps."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    states = []
    with torch.no_grad():
        for t in range(steps):
            if t % every == 0:
                states.append(obs)
            if random_actions:  # the states of a warm-up phase, which stay in a replay buffer
                action = torch.empty(1, env.action_space.shape[0]).uniform_(-1, 1)
            else:  # every script's sample takes raw observations
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
            obs, _, terminated, truncated, _ = env.step(module.to_env(action.numpy()[0], env.action_space))
            if terminated or truncated:
                obs, _ = env.reset()
    env.close()
    return torch.as_tensor(np.array(states), dtype=torch.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", required=True, help="the diffusion script that wrote the checkpoint, e.g. diffwpo.py")
    parser.add_argument("--checkpoint", required=True, help="model.pt written by --save-model")
    parser.add_argument("--env-steps", type=int, default=400, help="env steps of the run that collects states")
    parser.add_argument("--every", type=int, default=8, help="keep one state every this many env steps")
    parser.add_argument("--samples", type=int, default=64, help="chains per state")
    parser.add_argument("--random-actions", action="store_true", help="collect the states with uniform random actions")
    parser.add_argument("--entropy-samples", type=int, default=3000, help="chains per state for the entropy estimate")
    parser.add_argument("--seed", type=int, default=5)
    options = parser.parse_args()
    for name in ("script", "checkpoint"):
        if not Path(getattr(options, name)).is_file():
            raise SystemExit(f"error: --{name} {getattr(options, name)} is not a file")
    if min(options.env_steps, options.every) < 1 or options.samples < 2 or options.entropy_samples < 10:
        raise SystemExit("error: --env-steps and --every must be at least 1, --samples at least 2, --entropy-samples at least 10")

    torch.manual_seed(options.seed)
    module = load_script(options.script)
    actor, saved, _ = module.load_actor(options.checkpoint, "cpu")
    policy, normalize = split(actor)
    states = visited_states(actor, module, saved.env_id, options.env_steps, options.every, options.seed, options.random_actions)
    obs_norm = normalize(states)
    print(f"{saved.env_id}, {len(obs_norm)} states x {options.samples} chains, K = {policy.diffusion_steps}")
    print("| noise | std(x_K given s) | std(tanh given s) | saturated |\n|---|---|---|---|")
    for name, prior, kernel in [("all", True, True), ("kernel only (x_0 = 0)", False, True), ("prior only", True, False)]:
        print("| {} | {:.3f} | {:.3f} | {:.1%} |".format(name, *spread(chain_end(policy, obs_norm, options.samples, prior, kernel))))
    eta = policy.eta().mean(-1)
    print("\n| step j | eta_j | kernel std sqrt(2 eta_j) | std(x_K given s), step j's noise alone |\n|---|---|---|---|")
    for j in range(policy.diffusion_steps):
        alone = spread(chain_end(policy, obs_norm, options.samples, False, False, only_step=j))[0]
        print(f"| {j} | {eta[j]:.3f} | {torch.sqrt(2 * eta[j]):.3f} | {alone:.3f} |")
    entropy, bound = entropy_and_bound(policy, obs_norm, options.entropy_samples)
    print(
        f"\nH(tanh(x_K) given s), {options.entropy_samples} chains per state: k-NN estimate {entropy:.2f} nats, "
        f"the bound H_hat {bound:.2f}, gap {entropy - bound:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
