"""Runs every diffusion script and its Gaussian twin on the same envs, seeds, budget and evaluation.

Each run is one process (`python SCRIPT --env-id E --seed S --total-timesteps T --eval-frequency F
--eval-episodes N --exp-name NAME`, plus the preset's extra flags for its kind of script), started with
the runs directory as its working directory, so it writes to `RUNS_DIR/runs/{env}__{exp_name}__{seed}__{time}/`;
its stdout and stderr are appended to `RUNS_DIR/logs/{env}__{exp_name}__{seed}.out` / `.err`. `--workers`
runs go at once, each with `--threads` torch threads (OMP_NUM_THREADS).

A run is finished when its metrics.jsonl has an `eval/episodic_return` row at step == total_timesteps.
Finished runs with the same env id, exp_name, seed and budget are skipped, so an interrupted benchmark
resumes where it stopped; any other run directory of that env id, exp_name and seed (crashed, killed,
or another budget) is moved to `RUNS_DIR/stale/` and the run starts again. So never start two runners
(or a runner and unfinished submitit jobs) on the same RUNS_DIR: one would move the other's live runs aside.

Pairs come from PAIRS (diffusion script, Gaussian twin); a pair whose files do not exist yet is skipped.

Presets (2 workers, 1 torch thread each, on the 2-core machine of benchmarks/results/README.md):

    quick   Hopper-v5 and HalfCheetah-v5, seeds 1 and 2, eval every 10% of the budget, 5 episodes.
            Off-policy pairs: 20,000 env steps with --learning-starts 2000, i.e. 18,000 gradient updates.
              At the measured 55 (SAC) and 42 (DiffSAC, K = 8) env steps/s of the learning phase that is
              330 s + 430 s per (env, seed), plus about 10% for warm-up and evaluations: 14 CPU-min,
              so 4 x 14 = 56 CPU-min for the pair.
            On-policy pairs: 98,304 env steps (6 x 16,384, so any power-of-two rollout batch up to 16,384
              ends exactly on the budget). PPO runs at about 1,300 env steps/s: 75 s per run. A short check
              on the loaded machine put DiffPPO and DA-MDP REPPO (K = 8) at 2.2x and 2.4x their twins' cost
              per env step; at 3x: 5 CPU-min per (env, seed) with evaluations, 20 CPU-min per pair.
            Four pairs: 56 + 3 x 20 = 116 CPU-min, about 1 hour of wall time on 2 workers.
    paper   1M env steps (2^20 = 1,048,576) for every script, as in the paper; Hopper, Walker2d,
            HalfCheetah, Ant, Humanoid (v5); seeds 1-5; eval every 16,384 steps, 10 episodes. 200 runs
            of 5-7 CPU-hours each (off-policy, on one thread): for a cluster, `--backend submitit`.

    python benchmarks/run.py --preset quick --workers 2              # results in benchmarks/runs/quick
    python benchmarks/run.py --preset quick --dry-run                # print the commands, run nothing
    python benchmarks/run.py --preset paper --backend submitit --slurm-partition PART --workers 64
    python benchmarks/report.py benchmarks/runs/quick/runs --out benchmarks/runs/quick/report

`--backend submitit` (pip install submitit) hands the same commands to Slurm as one job array, with
`--workers` as the array's parallelism and `--threads` CPUs per job; it returns once they are submitted
(job files in RUNS_DIR/submitit/). Run the same command again once the jobs are done: it skips the
finished runs and resubmits the others. Without Slurm, submitit starts every job at once on this machine.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Pair:
    """A diffusion script and its Gaussian twin (paths relative to the repository root)."""

    diffusion: str
    baseline: str
    off_policy: bool


PAIRS = [
    Pair("diffsac.py", "baselines/sac.py", off_policy=True),
    Pair("diffppo.py", "baselines/ppo.py", off_policy=False),
    Pair("diffwpo.py", "baselines/wpo.py", off_policy=False),
    Pair("da_mdp_reppo.py", "baselines/reppo.py", off_policy=False),
]


def exp_name(script):
    """The exp_name a script's runs get (the scripts' own default: the file name without .py)."""
    return Path(script).stem


@dataclass(frozen=True)
class Budget:
    """What every run of one kind of script (off-policy or on-policy) gets."""

    total_timesteps: int
    eval_frequency: int
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    env_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    off_policy: Budget
    on_policy: Budget
    eval_episodes: int


PRESETS = {
    "quick": Preset(
        env_ids=("Hopper-v5", "HalfCheetah-v5"),
        seeds=(1, 2),
        off_policy=Budget(20_000, 2_000, ("--learning-starts", "2000")),
        on_policy=Budget(98_304, 16_384),
        eval_episodes=5,
    ),
    "paper": Preset(
        env_ids=("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "Humanoid-v5"),
        seeds=(1, 2, 3, 4, 5),
        off_policy=Budget(2**20, 16_384),
        on_policy=Budget(2**20, 16_384),
        eval_episodes=10,
    ),
}


@dataclass(frozen=True)
class Run:
    """One process to launch: a script on an env id with a seed and a budget."""

    script: str
    env_id: str
    seed: int
    total_timesteps: int
    args: tuple[str, ...]

    @property
    def name(self):
        """The run's identity, as the scripts spell it in their run directory names (without the time)."""
        return f"{self.env_id.replace(':', '_').replace('/', '_')}__{exp_name(self.script)}__{self.seed}"

    def command(self):
        return [sys.executable, str(REPO / self.script), *self.args]

    def describe(self):
        return shlex.join(["python", self.script, *self.args])


def read_run(run_dir):
    """(args.json, metrics rows) of a run directory; a line cut short by a crash is dropped."""
    args = json.loads((run_dir / "args.json").read_text())
    rows = []
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return args, rows


def is_finished(args, rows):
    """A run is finished when it logged an evaluation at step == total_timesteps."""
    return any("eval/episodic_return" in row and row["step"] == args["total_timesteps"] for row in rows)


def available_pairs(names=None):
    """The pairs of PAIRS whose two scripts exist (only those named by their diffusion exp_name, if given)."""
    pairs = []
    for pair in PAIRS:
        if names is not None and exp_name(pair.diffusion) not in names:
            continue
        missing = [script for script in (pair.diffusion, pair.baseline) if not (REPO / script).exists()]
        if missing:
            print(f"skipping the pair {pair.diffusion} / {pair.baseline}, not written yet: {' '.join(missing)}", file=sys.stderr)
        else:
            pairs.append(pair)
    if names is not None and (unknown := set(names) - {exp_name(pair.diffusion) for pair in PAIRS}):
        raise SystemExit(f"error: unknown --pairs {sorted(unknown)}; known: {[exp_name(pair.diffusion) for pair in PAIRS]}")
    return pairs


def plan(pairs, preset, options):
    """Every run of the benchmark, pair by pair, the diffusion script next to its twin for each env and seed."""
    runs = []
    for pair in pairs:
        budget = preset.off_policy if pair.off_policy else preset.on_policy
        total_timesteps = options.total_timesteps or budget.total_timesteps
        extra = list(budget.extra_args)
        if options.learning_starts is not None and pair.off_policy:
            if "--learning-starts" in extra:  # the override replaces the preset's value
                del extra[extra.index("--learning-starts") : extra.index("--learning-starts") + 2]
            extra += ["--learning-starts", str(options.learning_starts)]
        for env_id in options.env_ids or preset.env_ids:
            for seed in options.seeds or preset.seeds:
                for script in (pair.diffusion, pair.baseline):
                    args = ["--env-id", env_id, "--seed", str(seed), "--total-timesteps", str(total_timesteps)]
                    args += ["--eval-frequency", str(options.eval_frequency or budget.eval_frequency)]
                    args += ["--eval-episodes", str(options.eval_episodes or preset.eval_episodes), "--exp-name", exp_name(script)]
                    args += ["--eval-deterministic"] * options.eval_deterministic + extra
                    runs.append(Run(script, env_id, seed, total_timesteps, tuple(args)))
    return runs


def sort_out(runs, runs_dir, dry_run):
    """Splits runs into (to launch, finished); moves the other directories of a run to launch to stale/."""
    existing = {}
    for args_file in sorted((runs_dir / "runs").glob("*/args.json")):
        args, rows = read_run(args_file.parent)
        key = (args["env_id"], args["exp_name"], args["seed"])
        existing.setdefault(key, []).append((args_file.parent, is_finished(args, rows) and args["total_timesteps"]))
    todo, finished = [], []
    for run in runs:
        directories = existing.get((run.env_id, exp_name(run.script), run.seed), [])
        if any(done == run.total_timesteps for _, done in directories):
            finished.append(run)
            continue
        todo.append(run)
        for directory, _ in directories:
            print(f"{'would move' if dry_run else 'moving'} {directory} to stale/ (unfinished or another budget)")
            if not dry_run:
                (runs_dir / "stale").mkdir(exist_ok=True)
                directory.rename(runs_dir / "stale" / directory.name)
    return todo, finished


def run_environment(threads):
    """The environment of every run: `threads` torch threads; the repository importable (for envs.* ids)."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=python_path)


def launch_local(todo, runs_dir, workers, threads):
    """Runs the processes, `workers` at a time; returns {run name: (return code, finished, seconds)}."""
    (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = run_environment(threads)
    outcomes, completed = {}, iter(range(1, len(todo) + 1))

    def launch(run):
        log = runs_dir / "logs" / run.name
        start = time.time()
        with open(f"{log}.out", "a") as out, open(f"{log}.err", "a") as err:
            for stream in (out, err):
                stream.write(f"=== {datetime.now().isoformat(timespec='seconds')} {run.describe()}\n")
                stream.flush()
            returncode = subprocess.run(run.command(), cwd=runs_dir, env=env, stdout=out, stderr=err).returncode
        seconds = time.time() - start
        finished = any(is_finished(*read_run(path.parent)) for path in (runs_dir / "runs").glob(f"{run.name}__*/args.json"))
        outcomes[run.name] = (returncode, finished, seconds)
        status = "done" if returncode == 0 and finished else f"FAILED (exit code {returncode}; see {log}.err)"
        if returncode == 0 and not finished:
            status = f"FAILED (exited without an eval row at step {run.total_timesteps}; see {log}.out)"
        print(f"[{next(completed)}/{len(todo)}] {status} in {seconds / 60:.1f} min: {run.name}", flush=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(launch, todo))
    return outcomes


def submit_submitit(todo, runs_dir, options):
    """Hands the runs to Slurm (or submitit's local executor) as one job array; returns the jobs."""
    try:
        import submitit
    except ImportError:
        raise SystemExit("error: --backend submitit needs the submitit package: pip install submitit") from None
    (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=runs_dir / "submitit")
    parameters = {"name": "diffusion-maxent-rl", "timeout_min": options.timeout_min, "cpus_per_task": options.threads}
    parameters["slurm_array_parallelism"] = options.workers
    if options.slurm_partition:
        parameters["slurm_partition"] = options.slurm_partition
    executor.update_parameters(**parameters)
    env = run_environment(options.threads)
    with executor.batch():
        jobs = []
        for run in todo:
            log = shlex.quote(str(runs_dir / "logs" / run.name))
            header = shlex.quote(f"=== {datetime.now().isoformat(timespec='seconds')} (submitted) {run.describe()}")
            logging = f'echo {header} | tee -a {log}.out >> {log}.err; exec "$@" >> {log}.out 2>> {log}.err'
            logged = ["sh", "-c", logging, "sh", *run.command()]
            jobs.append(executor.submit(submitit.helpers.CommandFunction(logged, verbose=False, cwd=runs_dir, env=env)))
    for run, job in zip(todo, jobs, strict=True):
        print(f"submitted job {job.job_id}: {run.name}")
    return jobs


def machine():
    """One line naming the machine: CPU model, core count, OS, Python."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="budgets, envs and seeds (see above)")
    parser.add_argument("--pairs", nargs="+", help="only these pairs, by diffusion exp_name (diffsac diffppo diffwpo da_mdp_reppo)")
    parser.add_argument("--env-ids", nargs="+", help="override the preset's env ids")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    parser.add_argument("--total-timesteps", type=int, help="override every script's budget (env steps)")
    parser.add_argument("--eval-frequency", type=int, help="override the preset's evaluation interval (env steps)")
    parser.add_argument("--eval-episodes", type=int, help="override the preset's episodes per evaluation")
    parser.add_argument("--eval-deterministic", action="store_true", help="evaluate the noise-free policies")
    parser.add_argument("--learning-starts", type=int, help="override the warm-up of the off-policy scripts")
    parser.add_argument("--runs-dir", type=Path, help="where runs, logs and stale runs go (default: benchmarks/runs/PRESET)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (submitit: the job array's parallelism)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (OMP_NUM_THREADS)")
    parser.add_argument("--dry-run", action="store_true", help="print what would run and what is finished; run nothing")
    parser.add_argument("--backend", choices=["local", "submitit"], default="local", help="local processes or a Slurm job array")
    parser.add_argument("--slurm-partition", help="submitit: the Slurm partition")
    parser.add_argument("--timeout-min", type=int, default=24 * 60, help="submitit: the time limit of each job, minutes")
    options = parser.parse_args(argv)
    if options.workers < 1 or options.threads < 1:
        raise SystemExit("error: --workers and --threads must be at least 1")
    options.runs_dir = (options.runs_dir or REPO / "benchmarks" / "runs" / options.preset).resolve()
    return options


def main(argv=None):
    options = parse_args(argv)
    pairs = available_pairs(options.pairs)
    if not pairs:
        raise SystemExit("error: no pair of scripts to run (see the lines above)")
    runs = plan(pairs, PRESETS[options.preset], options)
    todo, finished = sort_out(runs, options.runs_dir, options.dry_run)
    for run in finished:
        print(f"finished, skipping: {run.name}")
    print(f"{len(runs)} runs, {len(finished)} finished, {len(todo)} to run in {options.runs_dir}", flush=True)
    if options.dry_run and todo:
        print(f"each run in {options.runs_dir} with OMP_NUM_THREADS={options.threads}, {options.workers} at a time:")
        for run in todo:
            print(run.describe())
        return
    if not todo:
        return
    if options.backend == "submitit":
        submit_submitit(todo, options.runs_dir, options)
        print(f"when the jobs are done, run this command again: it checks that every run finished (logs in {options.runs_dir / 'logs'})")
        return
    start = time.time()
    outcomes = launch_local(todo, options.runs_dir, options.workers, options.threads)
    wall_seconds = time.time() - start
    failed = sorted(name for name, (returncode, done, _) in outcomes.items() if returncode != 0 or not done)
    summary = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "workers": options.workers,
        "threads": options.threads,
        "wall_seconds": round(wall_seconds, 1),
        "runs": {name: {"exit_code": code, "finished": done, "seconds": round(s, 1)} for name, (code, done, s) in outcomes.items()},
    }
    with open(options.runs_dir / "runner.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(f"{len(todo) - len(failed)} of {len(todo)} runs finished in {wall_seconds / 60:.1f} min of wall time on {machine()}")
    if failed:
        raise SystemExit(f"error: {len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
