"""Wall-clock per env step of every diffusion script at several K against its Gaussian twin.

Every pair of benchmarks/run.py's PAIRS whose files exist is measured on one env, one process at a time,
one torch thread (OMP_NUM_THREADS=1), evaluation only at the end:
  off-policy  `--learning-starts` warm-up steps, then `--learning-steps` steps with the script's default
              gradient updates per env step; the speed is taken over the learning phase only.
  on-policy   `--on-policy-steps` env steps; the speed is taken over whole iterations (rollout and
              update), from the end of the first to the end of the last.
Both read the timestamps of the rows of metrics.jsonl that carry a `losses/*` tag. Repeats run in
mirrored order (A B C C B A), so that a drift in machine load hits every configuration alike. The
result is a markdown table per pair and the cost ratio per env step (baseline env steps/s over the
diffusion script's) at each K. Measure on an otherwise idle machine.

    python benchmarks/speed.py --env-id Hopper-v5 --diffusion-steps 4 8 16
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.run import REPO, available_pairs, exp_name, machine  # noqa: E402


def learning_sps(rows):
    """Env steps per second between the first and the last row that logs losses."""
    timed = [row for row in rows if any(tag.startswith("losses/") for tag in row)]
    if len(timed) < 2:
        return float("nan")
    return (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"])


def measure(script, extra_args, off_policy, options):
    """Env steps per second of one fresh run of `script`."""
    budget = options.learning_starts + options.learning_steps if off_policy else options.on_policy_steps
    command = [sys.executable, str(REPO / script), "--env-id", options.env_id, "--seed", "1", "--total-timesteps", str(budget)]
    command += ["--eval-frequency", str(10 * budget), "--eval-episodes", "1", *extra_args]
    command += ["--learning-starts", str(options.learning_starts)] if off_policy else []
    with tempfile.TemporaryDirectory() as workdir:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: {script} failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
        (metrics,) = Path(workdir).glob("runs/*/metrics.jsonl")
        sps = learning_sps([json.loads(line) for line in metrics.read_text().splitlines()])
    if math.isnan(sps):
        raise SystemExit(f"error: {script} logged losses fewer than twice in {budget} env steps; raise the budget")
    return sps


def mean(values):
    return sum(values) / len(values)


def cost_table(pair_speeds, diffusion_steps):
    """Markdown: per pair, the cost per env step of the diffusion script at each K relative to its baseline."""
    header = "| diffusion / baseline | " + " | ".join(f"K = {k}" for k in diffusion_steps) + " |"
    lines = [header, "|---|" + "---|" * len(diffusion_steps)]
    for (diffusion, baseline), speeds in pair_speeds.items():
        base = mean(speeds[baseline])
        cells = [f"{base / mean(speeds[f'{diffusion} K={k}']):.2f}x" for k in diffusion_steps]
        lines.append(f"| {diffusion} / {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="Hopper-v5")
    parser.add_argument("--pairs", nargs="+", help="only these pairs, by diffusion exp_name (default: every pair that exists)")
    parser.add_argument("--diffusion-steps", type=int, nargs="+", default=[4, 8, 16], help="the values of K to measure")
    parser.add_argument("--learning-starts", type=int, default=1000, help="off-policy: warm-up env steps, not timed")
    parser.add_argument("--learning-steps", type=int, default=3001, help="off-policy: env steps timed after the warm-up")
    parser.add_argument("--on-policy-steps", type=int, default=32_768, help="on-policy: env steps of each run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration, in mirrored order")
    options = parser.parse_args()

    pairs = available_pairs(options.pairs)
    if not pairs:
        raise SystemExit("error: no pair of scripts to measure")
    pair_speeds = {}
    for pair in pairs:
        diffusion, baseline = exp_name(pair.diffusion), exp_name(pair.baseline)
        configs = [(baseline, pair.baseline, [])]
        configs += [(f"{diffusion} K={k}", pair.diffusion, ["--diffusion-steps", str(k)]) for k in options.diffusion_steps]
        speeds = {name: [] for name, _, _ in configs}
        for repeat in range(options.repeats):
            for name, script, extra_args in configs if repeat % 2 == 0 else configs[::-1]:
                speeds[name].append(measure(script, extra_args, pair.off_policy, options))
                print(f"{name}: {speeds[name][-1]:.1f} env steps/s", file=sys.stderr, flush=True)
        pair_speeds[(diffusion, baseline)] = speeds

        phase = "learning phase, default updates per env step" if pair.off_policy else "whole iterations (rollout + update)"
        print(f"\n| {options.env_id}, {phase} | env steps/s | runs | wall-clock per env step vs {baseline} |")
        print("|---|---|---|---|")
        for name, values in speeds.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            print(f"| {name} | {mean(values):.1f} | {runs} | {mean(speeds[baseline]) / mean(values):.2f}x |")
    print(f"\nCost per env step, diffusion script / its baseline ({options.env_id}; {machine()}):\n")
    print(cost_table(pair_speeds, options.diffusion_steps))


if __name__ == "__main__":
    main()
