"""The maximum-entropy bandit benchmark: does a script's policy reach the exact maximum-entropy optimum of a one-step task?

On a one-step task the maximum-entropy optimum is known exactly: at temperature alpha, pi*(a) ~ exp(r(a) / alpha), in
the space where the script measures entropy. This command trains one script on a bandit of envs/bandits.py for
--total-timesteps env steps at the fixed temperature --alpha (or takes a saved model.pt instead), loads the policy
with the script's own load_actor, samples --samples actions for the task's constant observation and compares them
with pi*, computed by quadrature on [-1, 1]:

- the mass near each optimum, learned against pi*'s. "Near" is the optimum's basin, from the minimum of r on one
  side to the minimum on the other (the basins tile [-1, 1], so the masses sum to 1); with --near D, the part of
  the basin within D of the centre;
- the total-variation distance of the two --bins-bin histograms on [-1, 1] (0: the same, 1: disjoint);
- a figure with the learned histogram over pi*'s density, and the numbers as JSON and markdown (--out PREFIX:
  PREFIX.png, PREFIX.json, PREFIX.md).

The benchmark adds the flags that fix each script's temperature (so --script must not carry them):

    diffsac.py, baselines/sac.py                  --no-autotune --alpha-init A
    da_mdp_reppo.py, baselines/reppo.py,
    diffwpo.py, baselines/wpo.py                  --no-autotune --alpha-init A
    diffppo.py, baselines/ppo.py                  --no-normalize-reward --ent-coef A   (PPO's entropy coefficient eps)

Entropy space. The Gaussian twins' log pi includes tanh's log-det, and so, by default, does the diffusion scripts'
entropy bound (their tanh correction): the entropy is of the squashed action a in [-1, 1], and pi*(a) ~ exp(r(a) / alpha)
on [-1, 1]. With --no-tanh-correction a diffusion script's entropy is of the pre-tanh x, where exp(r(tanh x) / alpha)
is not normalisable on R (r(tanh x) tends to r(+-1), a finite value): the command then reports the learned masses and
says so instead of comparing. The diffusion scripts' entropy is a lower bound (docs/method.md, section 2), so how far
their optimum lies from pi* is part of what this measures.

Reward scale. r / alpha sets pi*'s sharpness. The bandits' r lies in [0, 1] (1 at each optimum, about 0 away from
them), so near an optimum of width w, pi* is close to N(c, w^2 alpha). Scripts that normalise rewards change the
effective temperature alpha_eff, in r's own units:

- SAC, DiffSAC: no reward normalisation; alpha_eff = alpha.
- PPO, DiffPPO: --normalize-reward (on by default) divides rewards by the running std s of the discounted return and
  clips them to [-10, 10] before the bonus -eps log pi (DiffPPO: -eps l_k) is added, so alpha_eff = eps * s. The
  benchmark trains them with --no-normalize-reward, where alpha_eff = eps exactly; a checkpoint trained with it is
  compared at eps * s as well (s from its reward_rms), flagged. Advantage normalisation (--norm-adv) rescales the
  gradient, not the objective, so it leaves alpha_eff alone.
- REPPO, DA-MDP REPPO, WPO, DiffWPO: rewards are always divided by the running std s of the discounted return (no flag
  turns it off) and alpha weighs the entropy against the normalised reward, so alpha_eff = alpha * s. Episodes here
  last one step, so that return is the reward itself and s is the running std of the rewards over the whole run. The
  command reads the final s from the checkpoint (return_normalizer, else the run's last losses/reward_scale) and
  compares at alpha * s as well as at alpha, flagged: s drifts while the policy learns, so training saw other
  effective temperatures before the last.

Every episode ends (terminated) after its one step, so gamma plays no role. Training runs the script as a subprocess
(one torch thread) in --runs-dir, so its run lands in RUNS_DIR/runs/{env}__maxent_bandit_{script}__{seed}__{time}/.

    python benchmarks/maxent_bandit.py --script diffsac.py --alpha 0.1    # BanditTwoUneven-v0, 20k env steps
    python benchmarks/maxent_bandit.py --script "diffsac.py --prior-std 1 --eta-lr 3e-3" --env-id envs.bandits:BanditThreeOptima-v0
    python benchmarks/maxent_bandit.py --script baselines/ppo.py --alpha 0.1 --total-timesteps 98304
    python benchmarks/maxent_bandit.py --script diffsac.py --checkpoint RUN_DIR/model.pt    # no training: the run's own alpha
"""

import argparse
import importlib.util
import json
import math
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

DEFAULT_ENV_ID = "envs.bandits:BanditTwoUneven-v0"
DEFAULT_ALPHA = 0.1
QUADRATURE_POINTS = 200_001  # grid spacing 1e-5: pi*'s narrowest peak (std w sqrt(alpha)) spans hundreds of points

# Each script's family: how its temperature is fixed and whether it normalises rewards (module docstring).
FAMILIES = {
    "diffsac.py": "sac",
    "baselines/sac.py": "sac",
    "diffppo.py": "ppo",
    "baselines/ppo.py": "ppo",
    "da_mdp_reppo.py": "reppo",
    "baselines/reppo.py": "reppo",
    "diffwpo.py": "reppo",
    "baselines/wpo.py": "reppo",
}
TEMPERATURE_FLAGS = {
    "sac": lambda alpha: ["--no-autotune", "--alpha-init", repr(alpha)],
    "ppo": lambda alpha: ["--no-normalize-reward", "--ent-coef", repr(alpha)],
    "reppo": lambda alpha: ["--no-autotune", "--alpha-init", repr(alpha)],
}
NORMALISATION = {
    "sac": "none: the soft reward is r - alpha log pi in r's own units, so alpha_eff = alpha",
    "ppo": "--normalize-reward divides r by the running return std s and clips it to [-10, 10] before -eps log pi is added "
    "(alpha_eff = eps * s); off (--no-normalize-reward): alpha_eff = eps",
    "reppo": "always on (no flag): r is divided by the running return std s (on a one-step task the std of the rewards) "
    "and alpha weighs the entropy against r / s, so alpha_eff = alpha * s",
}
# flags the benchmark sets itself; a --script entry that carries one is refused
RESERVED_FLAGS = {"--env-id", "--seed", "--total-timesteps", "--save-model", "--exp-name", "--evaluate-checkpoint"}
RESERVED_FLAGS |= {"--alpha-init", "--autotune", "--no-autotune", "--ent-coef", "--normalize-reward", "--no-normalize-reward"}


# --- the analytic optimum and the comparison -------------------------------------------------------------


def max_ent_cdf(reward, alpha, points=QUADRATURE_POINTS):
    """(grid, cdf): pi*(a) ~ exp(r(a) / alpha) on [-1, 1], integrated by the trapezoid rule on `points` grid points."""
    grid = np.linspace(-1.0, 1.0, points)
    r = np.asarray(reward(grid), dtype=np.float64)
    weights = np.exp((r - r.max()) / alpha)  # shifted by max r, so the exponent is at most 0
    cdf = np.concatenate([[0.0], np.cumsum((weights[1:] + weights[:-1]) / 2 * np.diff(grid))])
    return grid, cdf / cdf[-1]


def max_ent_density(reward, alpha, points=QUADRATURE_POINTS):
    """(grid, density): pi*(a) ~ exp(r(a) / alpha), normalised to integrate to 1 on [-1, 1]."""
    grid = np.linspace(-1.0, 1.0, points)
    r = np.asarray(reward(grid), dtype=np.float64)
    weights = np.exp((r - r.max()) / alpha)
    return grid, weights / np.sum((weights[1:] + weights[:-1]) / 2 * np.diff(grid))


def max_ent_mass(reward, alpha, windows):
    """pi*'s mass in each window [lo, hi] of the (n, 2) array `windows`."""
    grid, cdf = max_ent_cdf(reward, alpha)
    lo, hi = np.asarray(windows, dtype=np.float64).T
    return np.interp(hi, grid, cdf) - np.interp(lo, grid, cdf)


def max_ent_bins(reward, alpha, bins):
    """pi*'s mass in each of `bins` equal bins on [-1, 1]."""
    grid, cdf = max_ent_cdf(reward, alpha)
    return np.diff(np.interp(np.linspace(-1.0, 1.0, bins + 1), grid, cdf))


def basins(reward, centres, points=QUADRATURE_POINTS):
    """(n, 2) windows [-1, m_1], [m_1, m_2], ..., [m_{n-1}, 1], m_i the minimum of r between centres i and i + 1."""
    grid = np.linspace(-1.0, 1.0, points)
    r = np.asarray(reward(grid), dtype=np.float64)
    edges = [-1.0]
    for left, right in zip(centres[:-1], centres[1:], strict=True):
        between = (grid > left) & (grid < right)
        edges.append(float(grid[between][np.argmin(r[between])]))
    edges.append(1.0)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def near_windows(reward, centres, near=None):
    """Each optimum's window: its basin, or with `near` the part of the basin within `near` of the centre."""
    windows = basins(reward, np.asarray(centres, dtype=np.float64))
    if near is not None:
        windows = np.stack(
            [np.maximum(windows[:, 0], np.asarray(centres) - near), np.minimum(windows[:, 1], np.asarray(centres) + near)], 1
        )
    return windows


def mass_near(actions, windows):
    """Share of the actions in each window [lo, hi) of the (n, 2) array `windows` (hi included where it is 1, the bound)."""
    a = np.asarray(actions, dtype=np.float64).reshape(-1, 1)
    lo, hi = np.asarray(windows, dtype=np.float64).T
    inside = (a >= lo) & np.where(hi >= 1.0, a <= hi, a < hi)
    return inside.mean(0)


def total_variation(p, q):
    """Total-variation distance 1/2 sum |p - q| of two histograms, each normalised to sum 1 first (counts are fine)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


# --- the script: training, loading, sampling ---------------------------------------------------------------


def train(script, flags, family, options):
    """Trains `script flags` with --save-model at the fixed temperature; returns (checkpoint path, the command)."""
    command = [sys.executable, str(REPO / script), "--env-id", options.env_id, "--seed", str(options.seed)]
    command += ["--total-timesteps", str(options.total_timesteps), "--save-model", "--exp-name", f"maxent_bandit_{Path(script).stem}"]
    if family == "sac" and "--learning-starts" not in [flag.split("=")[0] for flag in flags]:
        command += ["--learning-starts", str(min(1000, options.total_timesteps // 4))]  # one-step episodes need no long warm-up
    command += flags + TEMPERATURE_FLAGS[family](options.alpha)
    options.runs_dir.mkdir(parents=True, exist_ok=True)
    print(f"training: {shlex.join([script, *command[2:]])} (in {options.runs_dir})", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=options.runs_dir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: training {script} failed: {last}")
    saved = re.search(r"model saved to (\S+)", result.stdout)
    if saved is None:
        raise SystemExit(f"error: {script} finished without saving a model (no 'model saved to' line in its output)")
    return options.runs_dir / saved.group(1), command


def load_script(script):
    """Imports an algorithm script as a module (its training loop sits behind `if __name__ == "__main__"`)."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_actions(actor, obs, samples, seed):
    """`samples` squashed actions a in [-1, 1] of the policy at the observation `obs` (the task's constant one)."""
    torch.manual_seed(seed)
    obs_batch = torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(1, -1).repeat(samples, 1)
    with torch.no_grad():
        action = actor.sample(obs_batch)[0]
    return action.reshape(samples, -1)[:, 0].double().numpy()


def temperature(family, saved, alpha_option):
    """(alpha, the flag it came from, a note or None): the temperature the saved run trained at, or --alpha's."""
    if family == "ppo":
        run_alpha, flag, tuned = float(saved.ent_coef), "--ent-coef", False
    else:
        run_alpha, flag, tuned = float(saved.alpha_init), "--alpha-init", bool(getattr(saved, "autotune", False))
    if tuned and alpha_option is None:
        raise SystemExit(f"error: the run tuned alpha (--autotune from {flag} {run_alpha:g}), so it has no fixed temperature: give --alpha")
    if alpha_option is None:
        return run_alpha, flag, None
    if tuned:
        return alpha_option, flag, f"the run tuned alpha (--autotune, from {flag} {run_alpha:g}); compared at --alpha {alpha_option:g}"
    if not math.isclose(alpha_option, run_alpha):
        return alpha_option, flag, f"the run trained at {flag} {run_alpha:g}; compared at --alpha {alpha_option:g}"
    return alpha_option, flag, None


def reward_scale(family, saved, checkpoint):
    """(s, where it comes from): the std that divided the rewards at the end of training; s = 1 without normalisation."""
    if family == "sac":
        return 1.0, "no reward normalisation"
    if family == "ppo" and not getattr(saved, "normalize_reward", True):
        return 1.0, "--no-normalize-reward"
    key = "reward_rms" if family == "ppo" else "return_normalizer"
    try:
        stats = torch.load(checkpoint, map_location="cpu", weights_only=False).get(key) or {}
        return math.sqrt(float(stats["var"]) + 1e-8), f"the checkpoint's {key}"
    except Exception:  # the key is missing or renamed: fall back to the run's metrics
        pass
    metrics = Path(checkpoint).parent / "metrics.jsonl"
    if metrics.is_file():
        scales = [row["losses/reward_scale"] for row in map(json.loads, metrics.read_text().splitlines()) if "losses/reward_scale" in row]
        if scales:
            return float(scales[-1]), "the run's last losses/reward_scale"
    return None, f"unknown: neither the checkpoint's {key} nor a losses/reward_scale in {metrics}"


def entropy_space(saved):
    """(comparable, text): in which space the script's entropy lives, and whether pi* on [-1, 1] applies there."""
    if not hasattr(saved, "diffusion_steps"):
        return True, "the squashed action a in [-1, 1]: the tanh-Gaussian's log pi includes tanh's log-det; pi*(a) ~ exp(r(a) / alpha)"
    if getattr(saved, "tanh_correction", True):
        return (
            True,
            "the squashed action a in [-1, 1]: the chain's bound includes tanh's log-det (the tanh correction); pi*(a) ~ exp(r(a) / alpha)",
        )
    return False, (
        "the pre-tanh x in R (--no-tanh-correction): exp(r(tanh x) / alpha) is not normalisable on R (r(tanh x) tends to r(+-1)), "
        "so there is no pi* to compare with; the learned masses are reported alone"
    )


def check_bandit(env_id):
    """The unwrapped env of `env_id`, if it is a 1-D bandit with a known reward (reward, centres, widths); else an error line."""
    try:
        env = gym.make(env_id).unwrapped
    except Exception as error:
        raise SystemExit(f"error: cannot make --env-id {env_id!r}: {(str(error).splitlines() or [type(error).__name__])[0]}") from None
    if not all(hasattr(env, name) for name in ("reward", "centres", "widths")) or env.action_space.shape != (1,):
        raise SystemExit(
            f"error: --env-id {env_id!r} is not a 1-D bandit with a known reward (reward, centres, widths): see envs/bandits.py"
        )
    return env


# --- output -------------------------------------------------------------------------------------------------


def figure(path, actions, env, comparisons, windows, bins, title):
    """The learned histogram over pi*'s density at each compared temperature, the reward on a second axis."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(actions, bins=bins, range=(-1, 1), density=True, color="tab:blue", alpha=0.6, label="learned")
    for (label, alpha), style in zip(comparisons, ["-", "--"], strict=False):
        grid, density = max_ent_density(env.reward, alpha, points=4001)
        ax.plot(grid, density, color="black", linestyle=style, label=f"pi* at {label} = {alpha:.4g}")
    for edge in np.unique(windows):
        if -1 < edge < 1:
            ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
    reward_ax = ax.twinx()
    grid = np.linspace(-1, 1, 801)
    reward_ax.plot(grid, env.reward(grid), color="tab:red", linewidth=1)
    reward_ax.set_ylim(0, 1.05)
    reward_ax.set_ylabel("r(a)", color="tab:red")
    ax.set_xlabel("action a")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(summary):
    """The summary as a markdown table: one row per optimum, one column per compared temperature."""
    temperatures = summary["comparisons"]
    lines = [
        f"`python {summary['command']}`\n",
        f"{summary['script']} on {summary['env_id']} after {summary['env_steps']} env steps, temperature {summary['temperature_flag']} "
        f"{summary['alpha']:g}; {summary['samples']} sampled actions.\n",
        f"- entropy space: {summary['entropy_space']}",
        f"- reward normalisation: {summary['reward_normalisation']}; s = {summary['reward_scale']} ({summary['reward_scale_source']})",
        *[f"- note: {note}" for note in summary["notes"]],
        "",
        "| optimum | width | window | learned |" + "".join(f" pi* ({c['label']} = {c['alpha']:.4g}) |" for c in temperatures),
        "|---|---|---|---|" + "---|" * len(temperatures),
    ]
    for i, (centre, width, window) in enumerate(zip(summary["centres"], summary["widths"], summary["windows"], strict=True)):
        cells = "".join(f" {100 * c['masses'][i]:.1f}% |" for c in temperatures)
        learned = 100 * summary["learned_masses"][i]
        lines.append(f"| {centre:g} | {width:g} | [{window[0]:.3f}, {window[1]:.3f}] | {learned:.1f}% |{cells}")
    if temperatures:
        lines.append(f"| TV ({summary['bins']} bins) | | | |" + "".join(f" {c['tv']:.3f} |" for c in temperatures))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help='"script.py [its flags]", one of: ' + ", ".join(FAMILIES))
    parser.add_argument("--env-id", help=f"a bandit of envs/bandits.py (default {DEFAULT_ENV_ID}; with --checkpoint: the run's)")
    parser.add_argument("--alpha", type=float, help=f"the fixed temperature (default {DEFAULT_ALPHA}; with --checkpoint: the run's)")
    parser.add_argument("--total-timesteps", type=int, default=20_000, help="env steps of training")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training run and of the sampled actions")
    parser.add_argument("--checkpoint", type=Path, help="a model.pt the script saved: compare it instead of training")
    parser.add_argument(
        "--runs-dir", type=Path, default=REPO / "benchmarks/runs/maxent_bandit", help="where training runs go (RUNS_DIR/runs/)"
    )
    parser.add_argument("--samples", type=int, default=20_000, help="actions sampled from the policy")
    parser.add_argument("--bins", type=int, default=50, help="bins on [-1, 1] of the histograms whose TV distance is reported")
    parser.add_argument("--near", type=float, help="a window of this half-width around each optimum, inside its basin (default: the basin)")
    parser.add_argument("--out", type=Path, help="output prefix of .png, .json and .md (default: next to the checkpoint)")
    options = parser.parse_args()

    entry = shlex.split(options.script)
    script = os.path.normpath(entry[0]) if entry else ""
    flags = entry[1:]
    if script not in FAMILIES:
        raise SystemExit(f"error: --script must start with one of {', '.join(FAMILIES)}, got {options.script!r}")
    if not (REPO / script).is_file():
        raise SystemExit(f"error: no such script: {REPO / script}")
    reserved = sorted({flag.split("=")[0] for flag in flags} & RESERVED_FLAGS)
    if reserved:
        raise SystemExit(f"error: --script must not carry {', '.join(reserved)}: the benchmark sets them (--env-id, --alpha, --seed, ...)")
    for name, value, low in [("alpha", options.alpha, 0.0), ("near", options.near, 0.0)]:
        if value is not None and not value > low:  # `not >` also rejects NaN
            raise SystemExit(f"error: --{name} must be positive, got {value}")
    for name in ("samples", "bins", "total_timesteps"):
        if getattr(options, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.checkpoint is not None and flags:
        raise SystemExit("error: --script carries training flags, but --checkpoint trains nothing: give the script alone")
    family = FAMILIES[script]

    command = None
    if options.checkpoint is None:
        options.env_id = options.env_id or DEFAULT_ENV_ID
        options.alpha = options.alpha if options.alpha is not None else DEFAULT_ALPHA
        check_bandit(options.env_id)
        checkpoint, command = train(script, flags, family, options)
    else:
        checkpoint = options.checkpoint
        if not checkpoint.is_file():
            raise SystemExit(f"error: no such checkpoint: {checkpoint}")
    try:
        actor, saved, env_steps = load_script(script).load_actor(checkpoint, torch.device("cpu"))
    except SystemExit as error:  # the script's own error line names its flag, --evaluate-checkpoint
        raise SystemExit(str(error).replace("--evaluate-checkpoint", "--checkpoint")) from None
    if options.env_id is not None and options.env_id != saved.env_id:
        raise SystemExit(f"error: the checkpoint's run was on {saved.env_id}, not --env-id {options.env_id}")
    env = check_bandit(saved.env_id)
    alpha, flag, alpha_note = temperature(family, saved, options.alpha)

    comparable, space = entropy_space(saved)
    scale, scale_source = reward_scale(family, saved, checkpoint)
    normalised = family == "reppo" or (family == "ppo" and getattr(saved, "normalize_reward", True))
    notes = [alpha_note] if alpha_note else []
    if normalised and scale is None:
        notes.append(
            "rewards were normalised by an unknown scale: the effective temperature is unknown, so pi* at alpha may not be the target"
        )
    elif normalised:
        notes.append(
            f"rewards were divided by s = {scale:.4g} at the end (a running std, so it drifted during training): the effective "
            f"temperature in r's units is alpha * s = {alpha * scale:.4g}"
        )
        limit = 10.0 if family == "ppo" else float(getattr(saved, "value_bound", 10.0))
        if 1.0 / scale > limit:
            what = "normalised rewards were clipped at 10" if family == "ppo" else f"the critic's support +-{limit:g} cannot hold r / s"
            notes.append(f"r / s reaches {1 / scale:.3g} > {limit:g}: {what}")

    obs, _ = env.reset(seed=options.seed)
    actions = sample_actions(actor, obs, options.samples, options.seed)
    if np.any(np.abs(actions) > 1):
        notes.append(f"{int(np.sum(np.abs(actions) > 1))} sampled actions lie outside [-1, 1]; the histograms leave them out")
    windows = near_windows(env.reward, env.centres, options.near)
    learned = mass_near(actions, windows)
    learned_bins = np.histogram(actions, bins=options.bins, range=(-1, 1))[0]

    temperatures = []
    if comparable:
        temperatures.append(("alpha", alpha))
        if normalised and scale is not None:
            temperatures.append(("alpha_eff", alpha * scale))
    comparisons = []
    for label, value in temperatures:
        masses = max_ent_mass(env.reward, value, windows)
        tv = total_variation(learned_bins, max_ent_bins(env.reward, value, options.bins)) if learned_bins.sum() else 1.0
        comparisons.append({"label": label, "alpha": value, "masses": masses.tolist(), "tv": tv})

    if options.out is None:
        options.out = Path(checkpoint).parent / f"maxent_bandit_{Path(script).stem}"
    options.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": shlex.join(sys.argv),
        "script": script,
        "script_flags": flags,
        "training_command": shlex.join([script, *command[2:]]) if command else None,  # the repository path, not this machine's
        "checkpoint": str(checkpoint),
        "env_id": saved.env_id,
        "env_steps": int(env_steps),
        "centres": env.centres.tolist(),
        "widths": env.widths.tolist(),
        "windows": windows.tolist(),
        "window": f"within {options.near:g} of the centre, inside its basin" if options.near else "the basin between the minima of r",
        "alpha": alpha,
        "temperature_flag": flag,
        "entropy_space": space,
        "reward_normalisation": NORMALISATION[family],
        "reward_scale": scale,
        "reward_scale_source": scale_source,
        "samples": options.samples,
        "bins": options.bins,
        "learned_masses": learned.tolist(),
        "comparisons": comparisons,
        "notes": notes,
    }
    options.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(summary))
    tvs = ", ".join(f"TV {c['tv']:.3f} at {c['label']} {c['alpha']:.3g}" for c in comparisons) or "no pi* to compare with"
    labels = [(c["label"], c["alpha"]) for c in comparisons]
    title = f"{script} on {saved.env_id}, {env_steps} env steps: {tvs}"
    figure(options.out.with_suffix(".png"), actions, env, labels, windows, options.bins, title)

    print(f"{script} on {saved.env_id} after {env_steps} env steps ({checkpoint}), temperature {flag} {alpha:g}")
    print(f"entropy space: {space}")
    print(f"reward normalisation: {NORMALISATION[family]}; s = {scale} ({scale_source})")
    for note in notes:
        print(f"note: {note}")
    header = "".join(f"  pi* at {c['label']} {c['alpha']:.3g}" for c in comparisons)
    print(f"mass near each optimum ({summary['window']}):\n  optimum  width  window              learned{header}")
    for i, (centre, width, (lo, hi)) in enumerate(zip(env.centres, env.widths, windows, strict=True)):
        cells = "  ".join(f"{100 * c['masses'][i]:6.1f}%".rjust(len(f"pi* at {c['label']} {c['alpha']:.3g}")) for c in comparisons)
        print(f"  {centre:7.3f}  {width:5.3f}  [{lo:6.3f}, {hi:6.3f}]  {100 * learned[i]:6.1f}%  {cells}")
    print(f"total variation of the {options.bins}-bin histograms: {tvs}")
    print(f"wrote {options.out.with_suffix('.png')}, .json and .md")


if __name__ == "__main__":
    main()
