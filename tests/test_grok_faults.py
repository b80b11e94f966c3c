"""`nexttoken grok train` killed (kill -9, Ctrl-C, SIGTERM) and resumed: every resumed run ends with the metrics of an
uninterrupted one, no step logged twice; two trainings given one --out: exactly one runs.

Each run is a subprocess on one CPU thread (the same arithmetic in every process, so metrics compare exactly)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["--op", "x+y", "--p", "11", "--n-embd", "16", "--n-head", "2", "--mlp-hidden", "32", "--lr", "3e-3",
        "--steps", "300", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nexttoken", "grok", "train", *args], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times (a half-written last line, as a kill leaves it, is skipped)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            out.append({k: v for k, v in json.loads(line).items() if k != "wall_s"})
        except json.JSONDecodeError:
            pass
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``condition()`` holds; False once the process has ended without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError


def assert_same_run(run: Path, reference: Path) -> None:
    got, want = records(run), records(reference)
    steps = [r["step"] for r in got]
    assert steps == sorted(set(steps)), "a step was logged twice"
    assert got == want
    assert json.loads((run / "summary.json").read_text())["final_val_acc"] == \
        json.loads((reference / "summary.json").read_text())["final_val_acc"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(*TINY, "--out", str(out)))
    assert code == 0, err
    return out


def test_a_kill_before_the_first_checkpoint_starts_over_cleanly(reference, tmp_path):
    for attempt in range(5):  # the kill must land before the first evaluation; a loaded machine may miss it
        run = tmp_path / f"run{attempt}"
        proc = start(*TINY, "--out", str(run))
        wait_for(lambda: (run / "config.json").exists(), proc)
        proc.kill()
        proc.wait()
        if not (run / "checkpoint.safetensors").exists():
            break
    else:
        pytest.skip("every kill landed after the first checkpoint")
    code, err = finish(start("--resume", str(run), "--device", "cpu"))
    assert code == 0, err
    assert_same_run(run, reference)


def test_the_state_a_kill_between_the_last_checkpoint_and_the_summary_leaves(reference, tmp_path):
    """The last checkpoint is written before summary.json and the plots; a kill in between leaves them missing, and
    resume writes them without training."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for name in ("summary.json", "curves.png", "loss.png"):
        (run / name).unlink()
    code, err = finish(start("--resume", str(run), "--device", "cpu"))
    assert code == 0 and "has already finished" in err, err
    assert (run / "curves.png").exists()
    assert_same_run(run, reference)
    (run / "summary.json").write_text("[]")  # damaged: written again from the run's records, not a traceback
    code, err = finish(start("--resume", str(run), "--device", "cpu"))
    assert code == 0 and "Traceback" not in err, err
    assert_same_run(run, reference)


def test_kills_at_random_points_resume_to_the_uninterrupted_run(reference, tmp_path):
    rng = random.Random(12)
    run = tmp_path / "run"
    proc = start(*TINY, "--out", str(run), "--checkpoint-steps", "1")  # a checkpoint at every evaluation and 64 steps
    kills = 0
    while kills < 3:
        started = wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size, proc)
        time.sleep(rng.uniform(0.0, 0.4))
        if not started or proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        proc = start("--resume", str(run), "--device", "cpu")
    code, err = finish(proc)
    assert code == 0, err
    assert kills >= 2
    assert_same_run(run, reference)


def test_ctrl_c_and_sigterm_save_and_resume_continues_exactly(reference, tmp_path):
    run = tmp_path / "run"
    proc = start(*TINY, "--out", str(run))
    for sig in (signal.SIGINT, signal.SIGTERM):
        logged = len(records(run)) if (run / "metrics.jsonl").exists() else 0
        assert wait_for(lambda: (run / "metrics.jsonl").exists() and len(records(run)) > logged + 1, proc)
        proc.send_signal(sig)
        code, err = finish(proc)
        assert code == 128 + sig, err  # the shell's code for the signal: 130 for Ctrl-C, 143 for SIGTERM
        said = err.strip().splitlines()[-1]
        assert said.endswith(f"with a checkpoint; continue with: nexttoken grok train --resume {run}"), err
        proc = start("--resume", str(run), "--device", "cpu")
    code, err = finish(proc)
    assert code == 0, err
    assert_same_run(run, reference)


def test_two_trainings_given_one_out_folder_one_runs(reference, tmp_path):
    run = tmp_path / "run"
    procs = [start(*TINY, "--out", str(run)) for _ in range(2)]
    results = sorted((finish(p) for p in procs), key=lambda r: r[0])
    assert [code for code, _ in results] == [0, 2], results
    refused = results[1][1].strip().splitlines()
    assert len(refused) == 1 and ("in use by another" in refused[0] or "already holds a run" in refused[0]), refused
    assert_same_run(run, reference)
