"""Several processes under torchrun (two gloo processes on the CPU): the collective helpers agree; the instruct
stages, a whole Jukebox pipeline and a muse model train with one writer and replicas that stay equal; a grok sweep
shares its ensembles out; a verb that runs in one process is refused. (The core loop's DDP gradient equals one process's: test_ddp.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jukebox_fixtures import jukebox_cache, run_cli, tiny_audio  # noqa: F401
from muse_fixtures import toy_corpus
from nexttoken.files import read_json
from nexttoken.runs import read_metrics

HERE = Path(__file__).parent


def torchrun(*args, env_vars=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           **(env_vars or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def test_two_processes_agree_and_run_the_instruct_stages_with_one_writer(tmp_path):
    proc = torchrun(HERE / "ddp_stages.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for s in seen:
        assert s["gather"] == list(range(7))  # shared out by rank, gathered back in order
        assert s["grad"] == [1.5, 3.0, 4.5]  # the mean of rank 0's (1, 2, 3) and rank 1's (2, 4, 6)
        assert s["mean"] == {"x": 0.5} and s["sum"] == [2.0] and s["any"] == [True, False]
    assert [s["marker_there"] for s in seen] == [False, True]  # rank 1 ran the block after rank 0 wrote the file
    assert [s["stopped"] for s in seen] == ["stopped at step 3"] * 2  # a SIGTERM to rank 1 alone stops both
    # rank 0 reports and writes, the others return nothing; the replicas took the same PPO steps
    assert seen[0]["pretrain"]["steps"] == 3 and seen[1]["pretrain"] == {}
    assert seen[0]["ppo"]["processes"] == 2 and seen[1]["ppo"] == {}
    assert len(seen[0]["ppo_checksums"]) == 2 and seen[0]["ppo_checksums"] == seen[1]["ppo_checksums"]
    assert [r["step"] for r in read_metrics(tmp_path / "ppo")] == [1, 2]
    rankings = (tmp_path / "rank" / "rankings.jsonl").read_text().splitlines()
    assert len(rankings) == 6  # both processes' shares of the prompts, written once


def test_a_jukebox_pipeline_trains_under_two_processes(tmp_path, tiny_audio):
    proc = torchrun("-m", "nexttoken", "jukebox", "train", "--audio", tiny_audio, "--preset", "tiny",
                    "--vqvae-steps", "2", "--prior-steps", "2", "--lyrics-lines", "4", "--val-fraction", "0.34",
                    "--val-clips", "4", "--out", tmp_path / "run", "--device", "cpu",
                    env_vars={"NEXTTOKEN_CACHE": os.environ["NEXTTOKEN_CACHE"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    for stage in ("vqvae", "top", "middle", "bottom"):
        assert (run / stage / "summary.json").is_file()
        steps = [r["step"] for r in read_metrics(run / stage)]
        assert steps == sorted(set(steps)) and steps[-1] == 2  # one writer: every record once
    assert (run / "codes.safetensors").is_file()
    assert proc.stdout.count("held-out spectral convergence") == 1  # the other process prints nothing


def test_a_muse_model_trains_under_two_processes_from_a_cache_rank_0_prepares(tmp_path):
    corpus = toy_corpus(tmp_path / "midi", per_style=3)
    proc = torchrun("-m", "nexttoken", "muse", "train", "--corpus", corpus, "--context", "64", "--n-layer", "1",
                    "--n-head", "2", "--n-embd", "32", "--val-pieces", "0", "--steps", "4", "--batch-size", "4",
                    "--eval-every", "2", "--out", tmp_path / "run", "--device", "cpu",
                    env_vars={"NEXTTOKEN_CACHE": str(tmp_path / "cache")})  # an empty cache: rank 0 fills it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [2, 4]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_grok_sweep_shares_its_ensembles_out_and_one_process_redoes_and_resumes_it(tmp_path):
    argv = ["grok", "sweep", "--op", "x+y", "--p", "7", "--n-embd", "16", "--n-head", "2", "--mlp-hidden", "32",
            "--steps", "30", "--fracs", "0.4,0.6", "--seeds", "2", "--device", "cpu"]
    proc = torchrun("-m", "nexttoken", *argv, "--out", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_json(tmp_path / "two" / "summary.json")
    assert two["runs"] == 4 and two["processes"] == 2
    # one ensemble per process, each trained and written once
    groups = sorted((tmp_path / "two").glob("group-*"))
    assert [read_json(g / "summary.json")["ensemble_size"] for g in groups] == [2, 2]
    assert proc.stdout.count("sweep folder:") == 1
    # the same ensembles in one process give the same results, in the same order
    assert run_cli([*argv, "--max-ensemble", "2", "--out", tmp_path / "one"]) == 0
    one = read_json(tmp_path / "one" / "summary.json")
    assert one["rows"] == two["rows"]
    # one process continues the two-process sweep with its plan: a group left unfinished is resumed in its folder
    (tmp_path / "two" / "summary.json").unlink()
    (groups[1] / "summary.json").unlink()
    assert run_cli(["grok", "sweep", "--resume", tmp_path / "two"]) == 0
    assert read_json(tmp_path / "two" / "summary.json")["rows"] == two["rows"]
    assert sorted((tmp_path / "two").glob("group-*")) == groups


@pytest.mark.parametrize("argv", [["jukebox", "report", "x"], ["instruct", "evaluate", "x"], ["grok", "table"]])
def test_a_one_process_verb_under_torchrun_is_one_clear_error(argv, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process; start it without torchrun" in err[0], err


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    import torch

    from nexttoken import training
    from nexttoken.distributed import init_distributed
    from nexttoken.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(training, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="2 processes on this machine but it has 1 GPU"):
        init_distributed("cuda")
