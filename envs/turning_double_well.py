"""The turning double-well task of arXiv 2512.02019 (docs/method.md, section 5), and an n-well variant.

A walker in the plane observes only its heading, as a unit vector. Its action a in [-1, 1] turns it by
a * 90 degrees, then it moves one unit. The reward depends on the turn alone:

    double well:  u = a^2, u* = 0.25, h = 0.85
                  r = h + (1 - h) * (1 - (1 - u / u*)^2)    for u <= u*
                  r = 1 - ((u - u*) / (1 - u*))^2            otherwise
                  two equal optima at a = +-0.5 (+-45 degrees), r = 0.85 at a = 0, r = 0 at a = +-1
    n wells:      optima at the centres c_i = -1 + (2i + 1) / n, half-spacing w = 1 / n, d = |a - nearest c_i|
                  r = 1 - (1 - h) * (d / w)^2   between two optima (h at the midpoints)
                  r = 1 - (d / w)^2             outside the outermost optima (0 at a = +-1)

Episodes start at one of the 8 multiples of 45 degrees and last 100 steps. Since the reward ignores the
heading, the optimal maximum-entropy policy is the same in every state and puts equal mass on each optimum.

No algorithm script imports this file; gymnasium does, from the env id:

    python diffsac.py --env-id envs.turning_double_well:TurningDoubleWell-v0
    python diffsac.py --env-id envs.turning_double_well:TurningMultiWell-v0      # 3 optima
"""

import gymnasium as gym
import numpy as np

HORIZON = 100
INITIAL_HEADINGS = np.arange(8) * np.pi / 4


def double_well_reward(action, u_star=0.25, h=0.85):
    """Reward of the turn a * 90 degrees: optima 1 at a = +-0.5, h at a = 0, 0 at a = +-1."""
    u = np.square(action)
    inside = h + (1 - h) * (1 - (1 - u / u_star) ** 2)
    outside = 1 - ((u - u_star) / (1 - u_star)) ** 2
    return np.where(u <= u_star, inside, outside)


def optima(num_wells):
    """The actions of the n equal optima, c_i = -1 + (2i + 1) / n (+-0.5 for the double well)."""
    return -1 + (2 * np.arange(num_wells) + 1) / num_wells


def multi_well_reward(action, num_wells, h=0.85):
    """n equal optima at c_i = -1 + (2i + 1) / n; h midway between two, 0 at a = +-1."""
    centres = optima(num_wells)
    half_spacing = 1 / num_wells
    distance = np.min(np.abs(np.asarray(action)[..., None] - centres), axis=-1) / half_spacing
    outside = np.abs(action) > centres[-1]
    return np.where(outside, 1 - distance**2, 1 - (1 - h) * distance**2)


class TurningWalker(gym.Env):
    """Observation (cos theta, sin theta); action a turns by a * 90 degrees, then one unit forward."""

    metadata = {"render_modes": []}

    def __init__(self, num_wells=2, render_mode=None):
        if num_wells < 2:
            raise ValueError(f"num_wells must be at least 2, got {num_wells}")
        self.num_wells, self.render_mode = num_wells, render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.heading, self.position = 0.0, np.zeros(2)

    def reward(self, action):
        """Reward of the scalar action a in [-1, 1]."""
        if self.num_wells == 2:
            return float(double_well_reward(action))
        return float(multi_well_reward(action, self.num_wells))

    def observation(self):
        return np.array([np.cos(self.heading), np.sin(self.heading)], np.float32)

    def reset(self, *, seed=None, options=None):
        """Starts at heading index options["heading"] (0-7, times 45 degrees) if given, else a random one."""
        super().reset(seed=seed)
        index = (options or {}).get("heading", self.np_random.integers(len(INITIAL_HEADINGS)))
        self.heading, self.position = float(INITIAL_HEADINGS[index]), np.zeros(2)
        return self.observation(), {"heading": int(index)}

    def step(self, action):
        turn = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        self.heading = float(np.mod(self.heading + turn * np.pi / 2, 2 * np.pi))
        self.position = self.position + np.array([np.cos(self.heading), np.sin(self.heading)])
        return self.observation(), self.reward(turn), False, False, {"position": self.position.copy()}


gym.register("TurningDoubleWell-v0", entry_point=TurningWalker, max_episode_steps=HORIZON, kwargs={"num_wells": 2})
gym.register("TurningMultiWell-v0", entry_point=TurningWalker, max_episode_steps=HORIZON, kwargs={"num_wells": 3})
