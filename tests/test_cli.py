"""What every script does with bad input, a checkpoint, an interrupt and a seed: the same in all eight.

Rejected input: one `error:` line on stderr, no traceback, a non-zero exit, before any work starts.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, only_run_dir, read_metrics, run_script

SCRIPTS = [
    "diffsac.py",
    "baselines/sac.py",
    "diffppo.py",
    "baselines/ppo.py",
    "da_mdp_reppo.py",
    "baselines/reppo.py",
    "diffwpo.py",
    "baselines/wpo.py",
]
LEARNING_RATE = {"diffsac.py": "--policy-lr", "baselines/sac.py": "--q-lr"}  # the others: --learning-rate

# (arguments, the error line's start); "{lr}" is the script's learning-rate flag
REJECTED = [
    (["--seed", -1], "error: --seed must lie in [0, 2**31), got -1"),
    (["--eval-frequency", 0], "error: --eval-frequency must be positive, got 0"),
    (["--eval-episodes", 0], "error: --eval-episodes must be at least 1, got 0"),
    (["--total-timesteps", -5], "error: --total-timesteps must be positive, got -5"),
    (["--gamma", 1.5], "error: --gamma must lie in [0, 1], got 1.5"),
    (["{lr}", "nan"], "error: {lr} must be positive, got nan"),
    (["--evaluate-checkpoint", "missing.pt"], "error: cannot load --evaluate-checkpoint missing.pt: [Errno 2] No such file"),
    (["--evaluate-checkpoint", "junk.pt"], "error: cannot load --evaluate-checkpoint junk.pt:"),
    (["--evaluate-checkpoint", "other.pt"], "error: --evaluate-checkpoint other.pt was written by {other}, not by {script}"),
]


def error_line(script, args, tmp_path):
    """Runs the script's check_args and checkpoint loading in-process; returns the SystemExit message."""
    from tests.conftest import load_script

    module = load_script(script)
    parsed = module.tyro.cli(module.Args, args=[str(a) for a in args])
    with pytest.raises(SystemExit) as stop:
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            module.check_args(parsed)
            module.load_actor(parsed.evaluate_checkpoint, torch.device("cpu"))
        finally:
            os.chdir(old)
    return str(stop.value)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_rejected_input_gets_one_error_line(script, tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    other = "ppo.py" if script != "baselines/ppo.py" else "sac.py"
    torch.save({"script": other, "args": {}}, tmp_path / "other.pt")
    name = os.path.basename(script)
    for args, expected in REJECTED:
        lr = LEARNING_RATE.get(script, "--learning-rate")
        args = [lr if a == "{lr}" else a for a in args]
        expected = expected.format(lr=lr, other=other, script=name)
        message = error_line(script, args, tmp_path)
        assert message.startswith(expected) and "\n" not in message, (args, message)


@pytest.mark.parametrize("script", SCRIPTS)
def test_rejected_input_exits_non_zero_with_one_line_on_stderr(script, tmp_path):
    result = run_script(script, "--seed", -1, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: --seed must lie in [0, 2**31), got -1"]


def test_cuda_without_a_gpu_says_the_run_uses_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = run_script("baselines/ppo.py", "--cuda", "--evaluate-checkpoint", "missing.pt", cwd=tmp_path)
    assert "--cuda: no GPU is visible, so the run uses the CPU" in result.stdout


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("diffsac.py", ("--learning-starts", 200, "--batch-size", 32, "--diffusion-steps", 2)),
        ("diffppo.py", ("--num-steps", 64, "--num-minibatches", 2, "--update-epochs", 1, "--diffusion-steps", 2)),
    ],
)
def test_an_interrupt_keeps_the_model_and_the_metrics(script, args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, str(REPO / script), "--total-timesteps", 1_000_000, "--save-model", *args]
    process = subprocess.Popen(list(map(str, command)), cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:  # wait until training has logged its first losses
        lines.append(line)
        metrics = list(tmp_path.glob("runs/*/metrics.jsonl"))
        if metrics and "losses/" in metrics[0].read_text():
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    lines += out.splitlines(True)
    assert process.returncode == 128 + signal.SIGINT
    interrupted = next(line for line in lines if line.startswith("interrupted at env step"))
    step = int(interrupted.split()[4].rstrip(":"))
    run_dir = only_run_dir(tmp_path)
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    assert checkpoint["env_steps"] == step
    assert f"model saved to {run_dir.relative_to(tmp_path) / 'model.pt'} at env step {step}" in "".join(lines)
    rows = read_metrics(run_dir)
    assert rows and any(key.startswith("losses/") for row in rows for key in row)
    assert not any("eval/episodic_return" in row and row["step"] == 1_000_000 for row in rows)  # unfinished


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("diffsac.py", ("--total-timesteps", 400, "--learning-starts", 300, "--batch-size", 32, "--diffusion-steps", 2)),
        ("da_mdp_reppo.py", ("--total-timesteps", 512, "--num-envs", 4, "--num-steps", 32, "--diffusion-steps", 2)),
    ],
)
def test_the_same_seed_gives_the_same_metrics(script, args, tmp_path):
    runs = []
    for name in ("first", "second"):
        result = run_script(script, *args, "--eval-frequency", 200, "--eval-episodes", 1, "--exp-name", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = read_metrics(next(tmp_path.glob(f"runs/*__{name}__*")))
        runs.append([{k: v for k, v in row.items() if k not in ("time", "charts/SPS")} for row in rows])
    assert runs[0] == runs[1] and any("eval/episodic_return" in row for row in runs[0])
