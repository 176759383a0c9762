"""Learning curves and a results table from the runs' metrics.jsonl files.

Groups runs by (env id, exp_name), one curve per group: eval return against env steps, the mean over
seeds with the min-max band. Prints a markdown table: last eval return (mean over seeds, each seed's
value), the env step it was taken at (runs stopped early show fewer steps than their budget), and env
steps per second of the learning phase (after the warm-up).

    python benchmarks/curves.py runs --out benchmarks/results/sac_100k.png --exp-names diffsac sac
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load_run(run_dir):
    """(args, eval steps, eval returns, learning-phase SPS) of one run directory."""
    args = json.loads((run_dir / "args.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(row["step"], row["eval/episodic_return"]) for row in rows if "eval/episodic_return" in row]
    timed = [row for row in rows if "losses/qf_loss" in row or "losses/value_loss" in row]
    sps = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"]) if len(timed) > 1 else float("nan")
    steps, returns = (np.array(v) for v in zip(*evals, strict=True)) if evals else (np.array([]), np.array([]))
    return args, steps, returns, sps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder holding run directories (runs/)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--exp-names", nargs="+", help="only the runs of these exp_names (default: all)")
    options = parser.parse_args()

    groups = defaultdict(list)
    for metrics in sorted(options.runs.glob("*/metrics.jsonl")):
        args, steps, returns, sps = load_run(metrics.parent)
        if len(steps) and (options.exp_names is None or args["exp_name"] in options.exp_names):
            groups[(args["env_id"], args["exp_name"])].append((args["seed"], steps, returns, sps))
    if not groups:
        raise SystemExit(f"error: no runs with an evaluation under {options.runs}")

    env_ids = sorted({env_id for env_id, _ in groups})
    fig, axes = plt.subplots(1, len(env_ids), figsize=(5 * len(env_ids), 3.6), squeeze=False)
    print("| env | algorithm | seeds | env steps | last eval return (mean) | per seed | learning SPS |")
    print("|---|---|---|---|---|---|---|")
    for ax, env_id in zip(axes[0], env_ids, strict=True):
        for (group_env, exp_name), runs in sorted(groups.items()):
            if group_env != env_id:
                continue
            length = min(len(steps) for _, steps, _, _ in runs)
            steps = runs[0][1][:length]
            curves = np.stack([returns[:length] for _, _, returns, _ in runs])
            ax.plot(steps, curves.mean(0), label=f"{exp_name} ({len(runs)} seeds)")
            ax.fill_between(steps, curves.min(0), curves.max(0), alpha=0.2)
            finals = ", ".join(f"{curve[-1]:.0f}" for curve in curves)
            sps = np.mean([run[3] for run in runs])
            print(f"| {env_id} | {exp_name} | {len(runs)} | {steps[-1]} | {curves[:, -1].mean():.0f} | {finals} | {sps:.0f} |")
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return")
        ax.legend()
    fig.tight_layout()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(options.out, dpi=120)
    print(f"\nwrote {options.out}")


if __name__ == "__main__":
    main()
