"""The multimodal benchmark: does the policy keep every optimum of the turning multi-well task?

Trains each script on the task (or takes saved checkpoints), samples many actions per initial heading
from each policy, draws the action histograms over the reward curve (one row per policy, one column
per heading) and prints the coverage: the share of samples within --near of each optimum.

    python benchmarks/multimodal.py --scripts diffsac.py baselines/sac.py --total-timesteps 20000
    python benchmarks/multimodal.py --env-id envs.turning_double_well:TurningMultiWell-v0 --scripts diffsac.py
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.run import PAIRS  # noqa: E402
from envs.turning_double_well import INITIAL_HEADINGS, optima  # noqa: E402


def train(script, options):
    """Trains `script` on the task with --save-model; returns the checkpoint's path."""
    command = [sys.executable, str(REPO / script), "--env-id", options.env_id, "--seed", str(options.seed)]
    command += ["--total-timesteps", str(options.total_timesteps), "--save-model"]
    if any(pair.off_policy and script in (pair.diffusion, pair.baseline) for pair in PAIRS):
        command += ["--learning-starts", "1000"]  # on-policy scripts have no warm-up
    command += ["--exp-name", f"multimodal_{Path(script).stem}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command + options.script_args, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: training {script} failed: {result.stderr.strip().splitlines()[-1]}")
    return Path(REPO / re.search(r"model saved to (\S+)", result.stdout).group(1))


def sample_actions(script, checkpoint, samples):
    """(8, samples) actions in [-1, 1] of the saved policy, one row per initial heading."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actor, _ = module.load_actor(checkpoint, torch.device("cpu"))
    headings = torch.tensor(INITIAL_HEADINGS, dtype=torch.float32)
    obs = torch.stack([torch.cos(headings), torch.sin(headings)], -1).repeat_interleave(samples, 0)
    with torch.no_grad():
        action = actor.sample(obs)[0]
    return action.reshape(len(INITIAL_HEADINGS), samples).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="envs.turning_double_well:TurningDoubleWell-v0")
    parser.add_argument("--scripts", nargs="+", default=["diffsac.py", "baselines/sac.py"])
    parser.add_argument("--checkpoints", nargs="+", type=Path, help="saved model.pt per script, instead of training")
    parser.add_argument("--total-timesteps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4000, help="actions sampled per heading")
    parser.add_argument("--near", type=float, default=0.2, help="a sample within this distance of an optimum covers it")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/multimodal_double_well.png")
    parser.add_argument("--script-args", nargs=argparse.REMAINDER, default=[], help="extra flags for every script")
    options = parser.parse_args()
    if options.checkpoints and len(options.checkpoints) != len(options.scripts):
        raise SystemExit("error: give one --checkpoints path per script")

    env = gym.make(options.env_id).unwrapped
    centres = optima(env.num_wells)
    checkpoints = options.checkpoints or [train(script, options) for script in options.scripts]
    grid = np.linspace(-1, 1, 401)
    fig, axes = plt.subplots(len(options.scripts), 8, figsize=(20, 2.6 * len(options.scripts)), squeeze=False, sharex=True)
    print(f"coverage: share of {options.samples} samples within {options.near} of each optimum {np.round(centres, 3).tolist()}")
    for row, (script, checkpoint) in enumerate(zip(options.scripts, checkpoints, strict=True)):
        actions = sample_actions(script, checkpoint, options.samples)
        coverage = (np.abs(actions[:, :, None] - centres) < options.near).mean(1)  # (heading, optimum)
        print(f"{script} ({checkpoint}): minimum over headings and optima {coverage.min():.2f}")
        for heading, ax in enumerate(axes[row]):
            ax.hist(actions[heading], bins=80, range=(-1, 1), density=True, color="tab:blue")
            reward_ax = ax.twinx()
            reward_ax.plot(grid, [env.reward(a) for a in grid], color="tab:red")
            reward_ax.set_ylim(0, 1.05)
            reward_ax.set_yticks([])
            ax.set_title(f"{heading * 45} deg: " + " / ".join(f"{c:.0%}" for c in coverage[heading]), fontsize=9)
            print(f"  heading {heading * 45:3d} deg: " + "  ".join(f"{c:5.1%}" for c in coverage[heading]))
        axes[row, 0].set_ylabel(Path(script).stem)
    fig.suptitle(f"{options.env_id}: sampled actions (blue) over the reward (red), per initial heading")
    fig.tight_layout()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(options.out, dpi=100)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
