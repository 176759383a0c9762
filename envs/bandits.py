"""One-step bandits with a known reward r(a) on [-1, 1], where the maximum-entropy optimum is known exactly.

The observation is the constant 0 (it carries no information), the action a in [-1, 1] is 1-D, and every
episode ends (terminated) after its one step with the reward

    r(a) = 1 - prod_i (1 - exp(-(a - c_i)^2 / (2 w_i^2)))

a soft union of Gaussian bumps: smooth, in [0, 1], exactly 1 at every centre c_i (each bump's own factor
is 0 there, whatever the others' tails), about 0 far from every centre. Near c_i, r ~ 1 - (a - c_i)^2 / (2 w_i^2),
so at temperature alpha the optimum pi*(a) ~ exp(r(a) / alpha) puts about w_i sqrt(2 pi alpha) of
unnormalised mass on optimum i: equal widths get equal mass, a wider optimum proportionally more.

    BanditTwoUneven-v0           two equal optima at -0.6 and 0.3 (not symmetric about 0), widths 0.15
    BanditTwoUnevenMirrored-v0   the same reflected, a -> -a (optima at -0.3 and 0.6): a script's preference for one
                                 of two equal optima shows here mirrored if it follows the optimum's distance from 0
    BanditThreeOptima-v0         three equal optima at -0.6, 0 and 0.6, widths 0.12
    BanditUnequalWidths-v0       equal height at -0.5 (width 0.08) and 0.5 (width 0.24)

The env exposes `reward(a)` (vectorised over numpy arrays), `centres` and `widths`, from which
benchmarks/maxent_bandit.py computes pi*. No algorithm script imports this file; gymnasium does, from the env id:

    python diffsac.py --env-id envs.bandits:BanditTwoUneven-v0
"""

import gymnasium as gym
import numpy as np


def bump_reward(action, centres, widths):
    """r(a) = 1 - prod_i (1 - exp(-(a - c_i)^2 / (2 w_i^2))), broadcast over the array `action`."""
    offsets = np.asarray(action, dtype=np.float64)[..., None] - np.asarray(centres, dtype=np.float64)
    bumps = np.exp(-np.square(offsets) / (2 * np.square(np.asarray(widths, dtype=np.float64))))
    return 1 - np.prod(1 - bumps, axis=-1)


class OneStepBandit(gym.Env):
    """Observation: the constant [0.0]; action a in [-1, 1]; reward bump_reward(a); every episode is one step."""

    metadata = {"render_modes": []}

    def __init__(self, centres, widths, render_mode=None):
        centres, widths = np.asarray(centres, dtype=np.float64), np.asarray(widths, dtype=np.float64)
        if centres.ndim != 1 or centres.shape != widths.shape or len(centres) == 0:
            raise ValueError(f"centres and widths must be equally long 1-D lists, got {centres.tolist()} and {widths.tolist()}")
        if np.any(np.diff(centres) <= 0) or np.any(np.abs(centres) >= 1) or np.any(widths <= 0):
            raise ValueError(f"centres must increase inside (-1, 1) and widths be positive, got {centres.tolist()}, {widths.tolist()}")
        self.centres, self.widths, self.render_mode = centres, widths, render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reward(self, action):
        """Reward of the action(s) a in [-1, 1]: a float for a scalar, an array of the same shape for an array."""
        value = bump_reward(action, self.centres, self.widths)
        return float(value) if np.ndim(value) == 0 else value

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        return np.zeros(1, np.float32), self.reward(a), True, False, {}


TASKS = {
    "BanditTwoUneven-v0": {"centres": [-0.6, 0.3], "widths": [0.15, 0.15]},
    "BanditThreeOptima-v0": {"centres": [-0.6, 0.0, 0.6], "widths": [0.12, 0.12, 0.12]},
    "BanditUnequalWidths-v0": {"centres": [-0.5, 0.5], "widths": [0.08, 0.24]},
    "BanditTwoUnevenMirrored-v0": {"centres": [-0.3, 0.6], "widths": [0.15, 0.15]},
}
for _env_id, _kwargs in TASKS.items():
    gym.register(_env_id, entry_point=OneStepBandit, kwargs=_kwargs)
