"""Learning curves and results tables from the runs' logs, one figure and one table per env id.

Reads every run directory (args.json + metrics.jsonl) in the folders given, groups the runs by (env id,
exp_name), and writes to --out: `{env}.png` (one panel per diffusion/baseline pair of benchmarks/run.py's
PAIRS, one more for exp_names outside the pairs) and `results.md` (the tables below, the figures, the
command that made them); the tables are printed too. Only finished runs count (an evaluation at step ==
total_timesteps) unless --include-unfinished, which takes a stopped run's last evaluation as its final one.

    python benchmarks/report.py benchmarks/runs/quick/runs --out benchmarks/runs/quick/report

Definitions (over the seeds of one env id and exp_name; a seed is one run):
    final return   a run's last eval/episodic_return
    mean, std      of the seeds' final returns; std is the sample std (ddof = 1), "-" with one seed
    IQM            interquartile mean of the final returns: the mean of the middle 50% of the empirical
                   distribution, 2 * integral of its quantile function over [0.25, 0.75], so a value that
                   straddles a quartile counts in part. With n seeds sorted x_1 <= ... <= x_n:
                   n = 1: x_1;  n = 2: the mean;  n = 3: (x_1 + 4 x_2 + x_3) / 6;
                   n divisible by 4: the mean without the n/4 lowest and n/4 highest values
                   (= scipy.stats.trim_mean(x, 0.25), the IQM of rliable).
    AUC            a run's mean eval return over training: the trapezoid rule over its eval points divided
                   by the step span from its first to its last evaluation (one evaluation: its value);
                   mean over seeds.
    env steps/s    a run's last logged step divided by its wall time at that row: the whole run, warm-up
                   and evaluations included; mean over seeds. Runs launched side by side share the CPU;
                   for the cost of an env step on an idle machine see benchmarks/speed.py.
    ratios         diffusion / baseline of the final return's mean and IQM and of the AUC ("n/a" where
                   the baseline's value is <= 0, where a ratio means nothing); cost per env step: the
                   baseline's env steps/s over the diffusion script's.
    curves         eval return against env steps: the mean over seeds and the interquartile band (25th to
                   75th percentile, numpy's linear interpolation: with 2 seeds, the middle half of the gap
                   between them). Seeds are aligned on the union of their eval steps between the latest
                   first evaluation and the earliest last one, each seed linearly interpolated there.
"""

import argparse
import shlex
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.run import PAIRS, exp_name, is_finished, read_run  # noqa: E402


def iqm(values):
    """Interquartile mean: 2 * integral over [0.25, 0.75] of the empirical quantile function."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    lower, upper = np.arange(n) / n, np.arange(1, n + 1) / n  # x[i] is the quantile over (lower[i], upper[i]]
    weights = np.clip(np.minimum(upper, 0.75) - np.maximum(lower, 0.25), 0, None)
    return float(weights @ x / 0.5)


def auc(steps, returns):
    """Mean eval return over training: trapezoid rule over the eval points divided by their step span."""
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if len(steps) == 1:
        return float(returns[0])
    return float(np.sum((returns[1:] + returns[:-1]) / 2 * np.diff(steps)) / (steps[-1] - steps[0]))


def ratio(diffusion, baseline):
    """diffusion / baseline, nan where the baseline's value is not positive (or either is nan)."""
    return diffusion / baseline if baseline > 0 and np.isfinite(diffusion) else float("nan")


def align(curves):
    """(grid, values[seed, step]): each seed's (steps, returns) interpolated on the common step grid."""
    start, end = max(steps[0] for steps, _ in curves), min(steps[-1] for steps, _ in curves)
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    return grid, np.stack([np.interp(grid, steps, returns) for steps, returns in curves])


def load_runs(folders, include_unfinished):
    """{(env id, exp_name): [run]} with run = dict(seed, steps, returns, sps, finished) for every run with an evaluation."""
    groups = defaultdict(list)
    for folder in folders:
        for args_file in sorted(Path(folder).glob("*/args.json")):
            args, rows = read_run(args_file.parent)
            evals = [(row["step"], row["eval/episodic_return"]) for row in rows if "eval/episodic_return" in row]
            finished = is_finished(args, rows)
            if not evals or not (finished or include_unfinished):
                continue
            steps, returns = (np.array(column, dtype=float) for column in zip(*evals, strict=True))
            timed = [row for row in rows if row.get("time", 0) > 0]
            sps = timed[-1]["step"] / timed[-1]["time"] if timed else float("nan")
            run = {
                "seed": args["seed"],
                "total_timesteps": args["total_timesteps"],
                "steps": steps,
                "returns": returns,
                "sps": sps,
                "dir": args_file.parent,
            }
            groups[(args["env_id"], args["exp_name"])].append(run)
    return groups


def summarise(runs):
    """The table's numbers for one group of seeds."""
    finals = np.array([run["returns"][-1] for run in runs])
    last_steps = sorted({int(run["steps"][-1]) for run in runs})
    return {
        "seeds": sorted(run["seed"] for run in runs),
        "env_steps": f"{last_steps[0]:,}" if len(last_steps) == 1 else f"{last_steps[0]:,}-{last_steps[-1]:,}",
        "mean": float(finals.mean()),
        "iqm": iqm(finals),
        "std": float(finals.std(ddof=1)) if len(finals) > 1 else float("nan"),
        "auc": float(np.mean([auc(run["steps"], run["returns"]) for run in runs])),
        "sps": float(np.mean([run["sps"] for run in runs])),
    }


def number(value, digits=0):
    return "-" if not np.isfinite(value) else f"{value:,.{digits}f}"


def times(value):
    return "n/a" if not np.isfinite(value) else f"{value:.2f}x"


def panels(names):
    """[(title, [exp_name, ...])]: each pair with both sides in `names`, then the exp_names outside the pairs."""
    result, paired = [], set()
    for pair in PAIRS:
        diffusion, baseline = exp_name(pair.diffusion), exp_name(pair.baseline)
        if diffusion in names and baseline in names:
            result.append((f"{diffusion} / {baseline}", [diffusion, baseline]))
            paired |= {diffusion, baseline}
    others = sorted(set(names) - paired)
    if others:
        result.append(("other runs", others))
    return result


def env_tables(env_id, groups):
    """Markdown: the per-script table and the diffusion/baseline ratio table of one env id."""
    names = [name for env, name in groups if env == env_id]
    stats = {name: summarise(groups[(env_id, name)]) for name in names}
    lines = [
        "| exp_name | seeds | env steps | final return: mean | IQM | std | AUC | env steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, members in panels(names):
        for name in members:
            s = stats[name]
            seeds = f"{len(s['seeds'])} ({', '.join(map(str, s['seeds']))})"
            lines.append(
                f"| {name} | {seeds} | {s['env_steps']} | {number(s['mean'])} | {number(s['iqm'])} | {number(s['std'])} "
                f"| {number(s['auc'])} | {number(s['sps'], 1)} |"
            )
    pairs = [members for title, members in panels(names) if title != "other runs"]
    if pairs:
        lines += ["", "| diffusion / baseline | final return: mean | IQM | AUC | cost per env step |", "|---|---|---|---|---|"]
        for diffusion, baseline in pairs:
            d, b = stats[diffusion], stats[baseline]
            # runs stopped at different steps (--include-unfinished) are not comparable: say so in the row
            unequal = f" (at {d['env_steps']} / {b['env_steps']} env steps)" if d["env_steps"] != b["env_steps"] else ""
            lines.append(
                f"| {diffusion} / {baseline}{unequal} | {times(ratio(d['mean'], b['mean']))} | {times(ratio(d['iqm'], b['iqm']))} "
                f"| {times(ratio(d['auc'], b['auc']))} | {times(ratio(b['sps'], d['sps']))} |"
            )
    return "\n".join(lines)


def plot_env(env_id, groups, path):
    """One panel per pair (and one for the rest): mean eval return and the interquartile band over seeds."""
    names = sorted(name for env, name in groups if env == env_id)
    # the scripts of PAIRS keep their colour in every figure; other exp_names take the colours after them
    paired = [exp_name(script) for pair in PAIRS for script in (pair.diffusion, pair.baseline)]
    others = [name for name in names if name not in paired]
    colours = {name: f"C{i % 10}" for i, name in enumerate(paired + others)}
    baselines = {exp_name(pair.baseline) for pair in PAIRS}
    layout = panels(names)
    fig, axes = plt.subplots(1, len(layout), figsize=(5 * len(layout), 3.6), squeeze=False)
    for ax, (title, members) in zip(axes[0], layout, strict=True):
        for name in members:
            runs = groups[(env_id, name)]
            grid, values = align([(run["steps"], run["returns"]) for run in runs])
            style = "--" if name in baselines else "-"
            ax.plot(grid, values.mean(0), style, color=colours[name], label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})")
            low, high = np.percentile(values, [25, 75], axis=0)
            ax.fill_between(grid, low, high, color=colours[name], alpha=0.2, linewidth=0)
        ax.set_title(f"{env_id}: {title}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def file_stem(env_id):
    return env_id.replace(":", "_").replace("/", "_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding run directories (e.g. benchmarks/runs/quick/runs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and results.md")
    parser.add_argument("--exp-names", nargs="+", help="only these exp_names (default: all)")
    parser.add_argument("--env-ids", nargs="+", help="only these env ids (default: all)")
    parser.add_argument("--include-unfinished", action="store_true", help="count stopped runs, at their last evaluation")
    parser.add_argument("--copy-logs", action="store_true", help="copy the args.json and metrics.jsonl of the runs used to OUT/runs/")
    options = parser.parse_args(argv)

    groups = load_runs(options.runs, options.include_unfinished)
    groups = {
        (env_id, name): runs
        for (env_id, name), runs in groups.items()
        if (options.exp_names is None or name in options.exp_names) and (options.env_ids is None or env_id in options.env_ids)
    }
    if not groups:
        kind = "runs with an evaluation" if options.include_unfinished else "finished runs"
        raise SystemExit(f"error: no {kind} under {' '.join(map(str, options.runs))} (after the filters)")

    for (env_id, name), runs in sorted(groups.items()):
        seeds, budgets = sorted(run["seed"] for run in runs), sorted({run["total_timesteps"] for run in runs})
        if len(set(seeds)) < len(seeds) or len(budgets) > 1:
            print(f"warning: {env_id} {name} has seeds {seeds} and budgets {budgets}: are these one benchmark?", file=sys.stderr)
    options.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/report.py", *(sys.argv[1:] if argv is None else map(str, argv))])
    sections = [f"# Results\n\nMade by `{command}`; definitions in `benchmarks/report.py`."]
    for env_id in sorted({env_id for env_id, _ in groups}):
        plot_env(env_id, groups, options.out / f"{file_stem(env_id)}.png")
        tables = env_tables(env_id, groups)
        print(f"\n{env_id}\n\n{tables}")
        sections.append(f"## {env_id}\n\n{tables}\n\n![{env_id}]({file_stem(env_id)}.png)")
    (options.out / "results.md").write_text("\n\n".join(sections) + "\n")
    if options.copy_logs:
        for runs in groups.values():
            for run in runs:
                target = options.out / "runs" / run["dir"].name
                if target.resolve() != run["dir"].resolve():
                    target.mkdir(parents=True, exist_ok=True)
                    for name in ("args.json", "metrics.jsonl"):
                        shutil.copy(run["dir"] / name, target / name)
    print(f"\nwrote {options.out / 'results.md'} and {', '.join(f'{file_stem(env)}.png' for env in sorted({env for env, _ in groups}))}")


if __name__ == "__main__":
    main()
