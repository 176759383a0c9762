"""The multimodal benchmark: does the policy keep every optimum of the turning multi-well task?

Trains each script on the task (or takes saved checkpoints), samples many actions per initial heading
from each policy, draws the action histograms over the reward curve (one row per policy, one column
per heading) and prints the coverage: the share of samples within --near of each optimum.

Coverage bar: with n optima, a policy keeps every mode when each optimum gets at least 1 / (2n) of the
samples (25% for the double well) in every heading. The default --near is 0.4 / n (0.2 for the double
well), so a uniform policy scores 0.4 / n per optimum (20%), below the bar; the exact maximum-entropy
policy pi(a) ~ exp(r(a) / alpha) scores 28-50% (double well) for every alpha <= 0.3.

Each --scripts entry is a script followed by its own flags, quoted as one argument:

    python benchmarks/multimodal.py      # DiffSAC and SAC with the settings of DEFAULT_SCRIPTS, 20k env steps
    python benchmarks/multimodal.py --env-id envs.turning_double_well:TurningMultiWell-v0 --out three_wells.png
    python benchmarks/multimodal.py --scripts "diffsac.py --prior-std 1" baselines/sac.py --total-timesteps 10000

Besides the PNG (--out) it writes the coverage table as markdown next to it (same name, .md).
"""

import argparse
import importlib.util
import os
import re
import shlex
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

# The settings of the figure in benchmarks/results (measured there): a fixed temperature alpha = 0.05, at which the
# exact maximum-entropy policy puts 44% of its mass near each optimum; gamma = 0.5, since the reward ignores the
# state and the optimal policy is the same for every gamma, while a short horizon gives the critic values of
# order 1 instead of 100, where the 0.15 reward gap between the optima and the middle is easy to resolve;
# prior std 1 and a fast step-size learning rate, so that the last denoising step's noise can shrink below
# the spacing of the optima within the budget. The Gaussian twin gets the same alpha and gamma.
DEFAULT_SCRIPTS = [
    "diffsac.py --prior-std 1 --gamma 0.5 --eta-lr 3e-3 --no-autotune --alpha-init 0.05",
    "baselines/sac.py --gamma 0.5 --no-autotune --alpha-init 0.05",
]


def train(entry, options):
    """Trains the script of `entry` ("script.py --its --flags") with --save-model; returns the checkpoint's path."""
    script, *flags = entry
    command = [sys.executable, str(REPO / script), "--env-id", options.env_id, "--seed", str(options.seed)]
    command += ["--total-timesteps", str(options.total_timesteps), "--save-model"]
    if any(pair.off_policy and script in (pair.diffusion, pair.baseline) for pair in PAIRS):
        command += ["--learning-starts", "1000"]  # on-policy scripts have no warm-up
    command += ["--exp-name", f"multimodal_{Path(script).stem}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command + flags + options.script_args, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: training {shlex.join(entry)} failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return Path(REPO / re.search(r"model saved to (\S+)", result.stdout).group(1))


def sample_actions(script, checkpoint, samples):
    """(8, samples) actions in [-1, 1] of the saved policy, one row per initial heading."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actor, _, _ = module.load_actor(checkpoint, torch.device("cpu"))
    headings = torch.tensor(INITIAL_HEADINGS, dtype=torch.float32)
    obs = torch.stack([torch.cos(headings), torch.sin(headings)], -1).repeat_interleave(samples, 0)
    with torch.no_grad():
        action = actor.sample(obs)[0]
    return action.reshape(len(INITIAL_HEADINGS), samples).numpy()


def coverage(actions, centres, near):
    """(heading, optimum) share of each heading's sampled actions (heading, samples) within `near` of each optimum."""
    return (np.abs(np.asarray(actions)[:, :, None] - np.asarray(centres)) < near).mean(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="envs.turning_double_well:TurningDoubleWell-v0")
    parser.add_argument("--scripts", nargs="+", default=DEFAULT_SCRIPTS, help='each "script.py [its flags]"')
    parser.add_argument("--checkpoints", nargs="+", type=Path, help="saved model.pt per script, instead of training")
    parser.add_argument("--total-timesteps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4000, help="actions sampled per heading")
    parser.add_argument("--near", type=float, help="a sample within this distance of an optimum covers it (default 0.4 / n)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/multimodal/double_well.png")
    parser.add_argument("--script-args", nargs=argparse.REMAINDER, default=[], help="extra flags for every script (last)")
    options = parser.parse_args()
    if options.checkpoints and len(options.checkpoints) != len(options.scripts):
        raise SystemExit("error: give one --checkpoints path per script")
    entries = [shlex.split(entry) for entry in options.scripts]  # [script, its flags...] each
    for entry, text in zip(entries, options.scripts, strict=True):
        if not entry or not (REPO / entry[0]).is_file():
            raise SystemExit(f"error: no such script: {text!r}")

    env = gym.make(options.env_id).unwrapped
    centres = optima(env.num_wells)
    near = options.near if options.near is not None else 0.4 / env.num_wells
    bar = 1 / (2 * env.num_wells)
    checkpoints = options.checkpoints or [train(entry, options) for entry in entries]
    grid = np.linspace(-1, 1, 401)
    fig, axes = plt.subplots(len(options.scripts), 8, figsize=(20, 2.6 * len(options.scripts)), squeeze=False, sharex=True)
    print(f"coverage: share of {options.samples} samples within {near:.3g} of each optimum {np.round(centres, 3).tolist()}")
    print(f"bar: at least {bar:.1%} per optimum in every heading (a uniform policy scores {near:.1%})")
    table = [
        f"`python {shlex.join(sys.argv)}`\n",
        f"Share of {options.samples} sampled actions within {near:.3g} of each optimum {np.round(centres, 3).tolist()}, "
        f"per initial heading; bar {bar:.1%} per optimum in every heading (uniform: {near:.1%}).\n",
        "| policy | " + " | ".join(f"{h * 45} deg" for h in range(8)) + " | minimum | keeps every mode |",
        "|---|" + "---|" * 10,
    ]
    for row, (entry, (script, *_), checkpoint) in enumerate(zip(options.scripts, entries, checkpoints, strict=True)):
        actions = sample_actions(script, checkpoint, options.samples)
        shares = coverage(actions, centres, near)  # (heading, optimum)
        verdict = "yes" if shares.min() >= bar else "no"
        print(f"{entry} ({checkpoint}): minimum over headings and optima {shares.min():.1%}, keeps every mode: {verdict}")
        cells = ["/".join(f"{100 * c:.0f}" for c in shares[h]) for h in range(8)]
        table.append(f"| {entry} | " + " | ".join(cells) + f" | {shares.min():.1%} | {verdict} |")
        for heading, ax in enumerate(axes[row]):
            ax.hist(actions[heading], bins=80, range=(-1, 1), density=True, color="tab:blue")
            reward_ax = ax.twinx()
            reward_ax.plot(grid, [env.reward(a) for a in grid], color="tab:red")
            reward_ax.set_ylim(0, 1.05)
            reward_ax.set_yticks([])
            ax.set_title(f"{heading * 45} deg: " + " / ".join(f"{c:.0%}" for c in shares[heading]), fontsize=9)
            print(f"  heading {heading * 45:3d} deg: " + "  ".join(f"{c:5.1%}" for c in shares[heading]))
        axes[row, 0].set_ylabel(entry.replace(" --", "\n--"), fontsize=8)
    fig.suptitle(f"{options.env_id}: sampled actions (blue) over the reward (red), per initial heading")
    fig.tight_layout()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(options.out, dpi=100)
    options.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"wrote {options.out} and {options.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
