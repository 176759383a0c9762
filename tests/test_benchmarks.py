"""The benchmark runner, the report and the speed table: aggregation maths on known numbers, fake logs, one tiny real run.

Fake runs are directories with the two files the report and the runner read: args.json and metrics.jsonl.
"""

import json
import math
import sys

import numpy as np
import pytest

from benchmarks import report, run, speed


def write_run(root, env_id, exp_name, seed, total_timesteps, evals, steps_per_second=100.0, stamp=0):
    """A run directory as the scripts write it; `evals` = [(step, return)], timed at `steps_per_second`."""
    run_dir = root / f"{env_id}__{exp_name}__{seed}__{1_700_000_000 + stamp}"
    run_dir.mkdir(parents=True)
    args = {"env_id": env_id, "exp_name": exp_name, "seed": seed, "total_timesteps": total_timesteps}
    (run_dir / "args.json").write_text(json.dumps(args))
    rows = [{"step": 500, "time": 500 / steps_per_second, "losses/qf_loss": 1.0}]
    rows += [{"step": step, "time": step / steps_per_second, "eval/episodic_return": value} for step, value in evals]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


# --- aggregation maths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([7.0], 7.0),
        ([3.0, 1.0], 2.0),  # n = 2: the mean
        ([30.0, 0.0, 6.0], (0 + 4 * 6 + 30) / 6),  # n = 3: the median, and a quarter of each extreme
        ([100.0, 1.0, 3.0, 2.0], 2.5),  # n = 4: the middle two
        ([1.0, 2.0, 3.0, 4.0, 100.0], 0.3 * 2 + 0.4 * 3 + 0.3 * 4),  # n = 5: weights 0.15, 0.2, 0.15 of the middle 50%
        ([-5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1000.0], 3.5),  # n = 8: drop two at each end
    ],
)
def test_iqm_is_the_mean_of_the_middle_half(values, expected):
    assert report.iqm(values) == pytest.approx(expected)


def test_iqm_matches_the_trimmed_mean_when_quartiles_fall_between_values():
    values = np.random.default_rng(0).normal(size=12)
    trimmed = np.sort(values)[3:9].mean()  # scipy.stats.trim_mean(values, 0.25)
    assert report.iqm(values) == pytest.approx(trimmed)


def test_auc_is_the_trapezoid_mean_over_the_step_span():
    # (0 + 10) / 2 * 10 + (10 + 10) / 2 * 20 = 250 over 30 steps
    assert report.auc([0, 10, 30], [0, 10, 10]) == pytest.approx(250 / 30)
    assert report.auc([1000, 2000], [4, 8]) == pytest.approx(6)
    assert report.auc([5000], [42]) == 42


def test_ratio_is_undefined_for_a_non_positive_baseline():
    assert report.ratio(50, 200) == 0.25
    assert report.ratio(-50, 200) == -0.25
    assert math.isnan(report.ratio(50, 0))
    assert math.isnan(report.ratio(50, -10))
    assert math.isnan(report.ratio(float("nan"), 10))


def test_align_interpolates_seeds_on_their_common_steps():
    grid, values = report.align(
        [(np.array([1000, 2000, 3000]), np.array([0, 10, 20])), (np.array([1000, 2100, 3000, 4000]), np.array([5, 5, 50, 9]))]
    )
    assert grid.tolist() == [1000, 2000, 2100, 3000]  # union of steps, up to the earliest last evaluation
    assert values[0].tolist() == pytest.approx([0, 10, 11, 20])
    assert values[1].tolist() == pytest.approx([5, 5, 5, 50])


# --- the report on fake logs ----------------------------------------------------------------------


@pytest.fixture
def fake_runs(tmp_path):
    """Three seeds of diffsac and sac on Hopper-v5, one unfinished sac run, one unpaired exp_name."""
    root = tmp_path / "runs"
    finals = {"diffsac": [100.0, 400.0, 700.0], "sac": [200.0, 500.0, 2000.0]}
    for name, values in finals.items():
        for seed, final in enumerate(values, start=1):
            evals = [(1000, 0.0), (2000, final / 2), (3000, final)]
            write_run(root, "Hopper-v5", name, seed, 3000, evals, steps_per_second=50.0 if name == "diffsac" else 100.0)
    write_run(root, "Hopper-v5", "sac", 4, 3000, [(1000, 9999.0)], stamp=1)  # stopped early
    write_run(root, "Hopper-v5", "diffsac_variant", 1, 3000, [(1000, 1.0), (3000, 3.0)])
    return root


def table_row(text, first_cell):
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_tables_and_figure(fake_runs, tmp_path, capsys):
    out = tmp_path / "report"
    report.main([str(fake_runs), "--out", str(out), "--copy-logs"])
    text = (out / "results.md").read_text()
    assert (out / "Hopper-v5.png").stat().st_size > 10_000
    assert "![Hopper-v5](Hopper-v5.png)" in text

    # diffsac: finals 100, 400, 700; AUC per seed (0 + f/2)/2 * 1000 + (f/2 + f)/2 * 1000 over 2000 steps = f/2
    assert table_row(text, "diffsac") == ["diffsac", "3 (1, 2, 3)", "3,000", "400", "400", "300", "200", "50.0"]
    # sac: the unfinished seed 4 is left out; IQM (200 + 4 * 500 + 2000) / 6 = 700
    assert table_row(text, "sac") == ["sac", "3 (1, 2, 3)", "3,000", "900", "700", "964", "450", "100.0"]
    assert table_row(text, "diffsac_variant")[1:4] == ["1 (1)", "3,000", "3"]
    assert table_row(text, "diffsac_variant")[5] == "-"  # no std with one seed
    # ratios: 400 / 900, 400 / 700, 200 / 450; cost: 100 / 50 env steps/s
    assert table_row(text, "diffsac / sac") == ["diffsac / sac", "0.44x", "0.57x", "0.44x", "2.00x"]
    assert "| diffsac_variant /" not in text
    assert table_row(capsys.readouterr().out, "diffsac / sac")[4] == "2.00x"
    assert len(list((out / "runs").glob("*/metrics.jsonl"))) == 7

    # the copied logs reproduce the report
    again = tmp_path / "again"
    report.main([str(out / "runs"), "--out", str(again)])
    assert table_row((again / "results.md").read_text(), "sac") == table_row(text, "sac")


def test_report_filters_and_unfinished_runs(fake_runs, tmp_path):
    out = tmp_path / "report"
    report.main([str(fake_runs), "--out", str(out), "--exp-names", "sac", "--include-unfinished"])
    text = (out / "results.md").read_text()
    assert table_row(text, "sac")[1:3] == ["4 (1, 2, 3, 4)", "1,000-3,000"]
    assert "| diffsac |" not in text and "diffsac / sac" not in text
    report.main([str(fake_runs), "--out", str(out), "--include-unfinished"])
    ratios = table_row((out / "results.md").read_text(), "diffsac / sac (at 3,000 / 1,000-3,000 env steps)")
    assert ratios[1] == f"{400 / ((200 + 500 + 2000 + 9999) / 4):.2f}x"  # flagged: the pair's runs stopped at different steps
    with pytest.raises(SystemExit, match="error: no finished runs"):
        report.main([str(fake_runs), "--out", str(out), "--env-ids", "Walker2d-v5"])


# --- the runner -------------------------------------------------------------------------------


def test_runner_commands(tmp_path, capsys):
    run.main(["--preset", "quick", "--pairs", "diffsac", "--seeds", "3", "--runs-dir", str(tmp_path), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith("python ")]
    common = "--seed 3 --total-timesteps 20000 --eval-frequency 2000 --eval-episodes 5"
    assert commands == [
        f"python diffsac.py --env-id Hopper-v5 {common} --exp-name diffsac --learning-starts 2000",
        f"python baselines/sac.py --env-id Hopper-v5 {common} --exp-name sac --learning-starts 2000",
        f"python diffsac.py --env-id HalfCheetah-v5 {common} --exp-name diffsac --learning-starts 2000",
        f"python baselines/sac.py --env-id HalfCheetah-v5 {common} --exp-name sac --learning-starts 2000",
    ]
    assert not (tmp_path / "logs").exists()  # a dry run runs nothing


def test_runner_overrides_and_on_policy_pairs():
    options = run.parse_args(["--env-ids", "Ant-v5", "--seeds", "1", "--total-timesteps", "5000", "--learning-starts", "100"])
    pairs = [run.Pair("diffsac.py", "baselines/sac.py", off_policy=True), run.Pair("diffppo.py", "baselines/ppo.py", off_policy=False)]
    runs = run.plan(pairs, run.PRESETS["quick"], options)
    assert [r.describe() for r in runs] == [
        "python diffsac.py --env-id Ant-v5 --seed 1 --total-timesteps 5000 --eval-frequency 2000 --eval-episodes 5 --exp-name diffsac"
        " --learning-starts 100",
        "python baselines/sac.py --env-id Ant-v5 --seed 1 --total-timesteps 5000 --eval-frequency 2000 --eval-episodes 5 --exp-name sac"
        " --learning-starts 100",
        # on-policy scripts get no --learning-starts, and their own evaluation interval
        "python diffppo.py --env-id Ant-v5 --seed 1 --total-timesteps 5000 --eval-frequency 16384 --eval-episodes 5 --exp-name diffppo",
        "python baselines/ppo.py --env-id Ant-v5 --seed 1 --total-timesteps 5000 --eval-frequency 16384 --eval-episodes 5 --exp-name ppo",
    ]
    assert runs[0].command()[:2] == [sys.executable, str(run.REPO / "diffsac.py")]
    paper = run.plan(pairs, run.PRESETS["paper"], run.parse_args(["--preset", "paper"]))
    assert len(paper) == 2 * 2 * 5 * 5 and {r.total_timesteps for r in paper} == {2**20}


def test_runner_skips_finished_runs_and_moves_the_rest_aside(tmp_path):
    runs_dir = tmp_path / "bench"
    root = runs_dir / "runs"
    done = write_run(root, "Hopper-v5", "diffsac", 1, 20_000, [(10_000, 1.0), (20_000, 2.0)])
    crashed = write_run(root, "Hopper-v5", "sac", 1, 20_000, [(10_000, 1.0)])
    other_budget = write_run(root, "Hopper-v5", "sac", 1, 9_000, [(9_000, 1.0)], stamp=1)
    other_seed = write_run(root, "Hopper-v5", "sac", 2, 20_000, [(20_000, 1.0)])
    (crashed / "metrics.jsonl").open("a").write('{"step": 15000, "ti')  # cut short by the crash

    assert run.is_finished(*run.read_run(done)) and not run.is_finished(*run.read_run(crashed))
    options = run.parse_args(["--env-ids", "Hopper-v5", "--seeds", "1", "2", "--runs-dir", str(runs_dir)])
    planned = run.plan([run.Pair("diffsac.py", "baselines/sac.py", off_policy=True)], run.PRESETS["quick"], options)
    todo, finished = run.sort_out(planned, runs_dir, dry_run=False)
    assert [r.name for r in finished] == ["Hopper-v5__diffsac__1", "Hopper-v5__sac__2"]
    assert [r.name for r in todo] == ["Hopper-v5__sac__1", "Hopper-v5__diffsac__2"]
    assert done.exists() and other_seed.exists()
    assert not crashed.exists() and not other_budget.exists()
    assert sorted(p.name for p in (runs_dir / "stale").iterdir()) == sorted([crashed.name, other_budget.name])


FAKE_SCRIPT = """
import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
total = int(args["--total-timesteps"])
run_dir = f"runs/{args['--env-id']}__{args['--exp-name']}__{args['--seed']}__1"
os.makedirs(run_dir)
json.dump({"env_id": args["--env-id"], "exp_name": args["--exp-name"], "seed": int(args["--seed"]), "total_timesteps": total},
          open(f"{run_dir}/args.json", "w"))
last = total if os.environ["OMP_NUM_THREADS"] == "1" else total - 1  # a run that stops short
open(f"{run_dir}/metrics.jsonl", "w").write(json.dumps({"step": last, "time": 1.0, "eval/episodic_return": 1.0}) + "\\n")
print("step", last, "of", total)
sys.exit(3 if args["--seed"] == "2" else 0)
"""


def test_local_backend_launches_logs_and_reports_failures(tmp_path, capsys):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    runs_dir = tmp_path / "bench"
    common = ("--env-id", "Hopper-v5", "--total-timesteps", "10", "--exp-name", "fake")
    runs = [run.Run(str(script), "Hopper-v5", seed, 10, ("--seed", str(seed), *common)) for seed in (1, 2)]
    outcomes = run.launch_local(runs, runs_dir, workers=2, threads=1)
    assert {name: outcome[:2] for name, outcome in outcomes.items()} == {"Hopper-v5__fake__1": (0, True), "Hopper-v5__fake__2": (3, True)}
    assert "step 10 of 10" in (runs_dir / "logs" / "Hopper-v5__fake__1.out").read_text()
    assert "exit code 3" in capsys.readouterr().out

    outcomes = run.launch_local(runs[:1], tmp_path / "two_threads", workers=1, threads=2)
    assert outcomes["Hopper-v5__fake__1"][:2] == (0, False)
    assert "without an eval row at step 10" in capsys.readouterr().out


def test_submitit_backend_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    with pytest.raises(SystemExit, match="pip install submitit"):
        run.main(["--pairs", "diffsac", "--seeds", "1", "--runs-dir", str(tmp_path), "--backend", "submitit"])


def test_runner_and_report_end_to_end(tmp_path, capsys):
    """Smoke test with numbers: DiffSAC and SAC for 400 env steps (100 gradient updates), 2 at a time, then the report."""
    runs_dir = tmp_path / "bench"
    argv = ["--pairs", "diffsac", "--env-ids", "Hopper-v5", "--seeds", "1", "--total-timesteps", "400", "--learning-starts", "300"]
    argv += ["--eval-frequency", "200", "--eval-episodes", "2", "--workers", "2", "--runs-dir", str(runs_dir)]
    run.main(argv)
    assert "2 of 2 runs finished" in capsys.readouterr().out
    summary = json.loads((runs_dir / "runner.jsonl").read_text())
    assert summary["workers"] == 2 and set(summary["runs"]) == {"Hopper-v5__diffsac__1", "Hopper-v5__sac__1"}

    run.main(argv)  # everything finished: nothing runs again
    assert "2 runs, 2 finished, 0 to run" in capsys.readouterr().out
    assert len(list((runs_dir / "runs").iterdir())) == 2

    report.main([str(runs_dir / "runs"), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "results.md").read_text()
    assert table_row(text, "diffsac")[1:3] == ["1 (1)", "400"]
    assert table_row(text, "diffsac / sac")[4].endswith("x")


# --- speed.py -------------------------------------------------------------------------------------


def test_speed_tables():
    rows = [{"step": 1001, "time": 10.0, "losses/qf_loss": 1.0}, {"step": 1500, "time": 12.0, "eval/episodic_return": 3.0}]
    rows += [{"step": 3001, "time": 50.0, "losses/qf_loss": 1.0}]
    assert speed.learning_sps(rows) == pytest.approx(2000 / 40)
    assert math.isnan(speed.learning_sps(rows[:2]))
    speeds = {("diffsac", "sac"): {"sac": [50.0, 70.0], "diffsac K=4": [50.0], "diffsac K=8": [40.0, 40.0]}}
    assert speed.cost_table(speeds, [4, 8]).splitlines() == [
        "| diffusion / baseline | K = 4 | K = 8 |",
        "|---|---|---|",
        "| diffsac / sac | 1.20x | 1.50x |",
    ]
