"""A Hopper whose rewards are NaN, to check that the scripts stop on a NaN loss.

Used through the env id `tests.nan_env:NanRewardHopper-v0` (gymnasium imports this module, which registers it).
"""

import gymnasium as gym


class NanReward(gym.Wrapper):
    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, float("nan"), terminated, truncated, info


gym.register("NanRewardHopper-v0", entry_point=lambda **kwargs: NanReward(gym.make("Hopper-v5", **kwargs)))
