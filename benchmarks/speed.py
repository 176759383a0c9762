"""Wall-clock per env step of DiffSAC at several K against SAC, measured in one invocation.

Each configuration trains for `--learning-starts` warm-up steps plus `--learning-steps` steps with one
gradient update per env step, one torch thread, one process at a time; the speed is taken over the
learning phase only (from the timestamps of metrics.jsonl). Repeats run in mirrored order (A B C C B A)
so that a drift in machine load hits every configuration alike.

    python benchmarks/speed.py --env-id Hopper-v5 --diffusion-steps 4 8 16
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def learning_sps(script, extra_args, options):
    """Env steps per second after the warm-up, from one fresh run of `script`."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, str(REPO / script), "--env-id", options.env_id, "--seed", "1"]
        command += ["--total-timesteps", str(options.learning_starts + options.learning_steps)]
        command += ["--learning-starts", str(options.learning_starts), "--eval-frequency", "10000000", "--eval-episodes", "1"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        subprocess.run(command + extra_args, cwd=workdir, env=env, check=True, capture_output=True)
        (metrics,) = Path(workdir).glob("runs/*/metrics.jsonl")
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if "losses/qf_loss" in line]
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="Hopper-v5")
    parser.add_argument("--diffusion-steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--learning-steps", type=int, default=3001, help="env steps timed after the warm-up")
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()

    configs = [("SAC", "baselines/sac.py", [])]
    configs += [(f"DiffSAC K={k}", "diffsac.py", ["--diffusion-steps", str(k)]) for k in options.diffusion_steps]
    speeds = {name: [] for name, _, _ in configs}
    for repeat in range(options.repeats):
        for name, script, extra_args in configs if repeat % 2 == 0 else configs[::-1]:
            speeds[name].append(learning_sps(script, extra_args, options))
            print(f"{name}: {speeds[name][-1]:.1f} env steps/s", file=sys.stderr, flush=True)

    baseline = sum(speeds["SAC"]) / len(speeds["SAC"])
    print(f"| {options.env_id}, 1 update per env step | env steps/s | runs | wall-clock per env step vs SAC |")
    print("|---|---|---|---|")
    for name, values in speeds.items():
        mean = sum(values) / len(values)
        print(f"| {name} | {mean:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {baseline / mean:.2f}x |")


if __name__ == "__main__":
    main()
