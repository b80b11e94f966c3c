"""Every grok command given bad values, damaged or foreign run folders and unwritable outputs: exit code 2, one line
on stderr, no traceback, nothing left behind (calls of ``nexttoken.cli.main`` in this process)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nexttoken.cli import main
from nexttoken.files import save_tensors

TINY = ["--op", "x+y", "--p", "7", "--n-embd", "16", "--n-head", "2", "--mlp-hidden", "32", "--steps", "30", "--device",
        "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `nexttoken ARGV`; argparse's errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# quick to train, should a refusal be missed
SMALL = ["--p", "7", "--n-embd", "8", "--n-head", "2", "--mlp-hidden", "8", "--steps", "2", "--device", "cpu"]
FEW = [*SMALL, "--seeds", "1"]

BAD_VALUES = [
    (["train", "--dropout", "2"], "--dropout must be >= 0 and < 1"),
    (["train", "--steps", "inf"], "expected a finite number"),
    (["train", "--steps", "many"], "expected a number"),
    (["train", "--steps", "0"], "--steps must be >= 1"),
    (["train", "--steps", "2.5"], "expected an integer"),
    (["train", "--frac", "1.5"], "--frac must be > 0 and < 1"),
    (["train", "--frac", "0"], "--frac must be > 0 and < 1"),
    (["train", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--lr", "nan"], "expected a finite number"),
    (["train", "--weight-decay", "-0.5"], "--weight-decay must be >= 0"),
    (["train", "--l2", "-0.1"], "--l2 must be >= 0"),
    (["train", "--beta2", "1"], "--beta2 must be >= 0 and < 1"),
    (["train", "--batch-size", "-1"], "--batch-size must be >= 0"),
    (["train", "--grokfast-window", "0"], "--grokfast-window must be >= 1"),
    (["train", "--stop-at", "2"], "--stop-at must be >= 0 and <= 1"),
    (["train", "--eval-ratio", "0.5"], "--eval-ratio must be >= 1"),
    (["train", "--snapshots", "-1"], "--snapshots must be >= 0"),
    (["train", "--checkpoint-seconds", "0"], "--checkpoint-seconds must be > 0"),
    (["train", "--op", "x^9"], "invalid choice: 'x^9'"),
    (["train", "--grokfast", "fast"], "invalid choice: 'fast'"),
    (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["train", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "--op", "x/y", "--p", "91"], "91 is not prime"),
    (["train", "--p", "1"], "--p must be >= 2"),
    (["train", "--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
    (["train", "--op", "x+y", "--p", "1000000"], "GiB of host memory, more than the"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["sweep", "--seeds", "0"], "--seeds must be >= 1"),
    (["sweep", "--max-ensemble", "0"], "--max-ensemble must be >= 1"),
    (["sweep", "--fracs", "0.3,1.5"], "--fracs must be > 0 and < 1, not 1.5"),
    (["sweep", "--fracs", "0.3,half"], "--fracs: expected a number"),
    (["sweep", "--ops", "x+y,x^9"], "--ops must be one of"),
    (["sweep", "--grid", "nonsense=1"], "--grid expects NAME=V1,V2"),
    (["sweep", "--grid", "lr=0.1,-1"], "--grid lr must be > 0"),
    (["sweep", "--grid", "bias=maybe"], "--grid bias takes true or false"),
    (["sweep", "--grid", "n_head=3"], "is not divisible by --n-head 3"),
    (["sweep", "--op", "x+y", "--p", "1000000", "--fracs", "0.5", "--seeds", "1"], "the largest p that fits is about"),
    (["sweep", *FEW, "--ops", ","], "--ops needs at least one value"),
    (["sweep", *FEW, "--fracs", ","], "--fracs needs at least one value"),
    (["sweep", *FEW, "--grid", "lr=,"], "--grid lr needs at least one value"),
    (["sweep", *FEW, "--fracs", "0.5,0.50"], "--fracs lists 0.5 twice"),
    (["sweep", *FEW, "--ops", "x+y,x-y,x+y"], "--ops lists x+y twice"),
    (["sweep", *FEW, "--grid", "bias=true,yes"], "--grid bias lists True twice"),
    (["sweep", *FEW, "--grid", "weight_decay=1", "--grid", "weight-decay=2"], "--grid weight_decay is given twice"),
    (["sweep", *FEW, "--frac", "0.3"], "--frac is not used by a sweep; give its training fractions with --fracs"),
    (["sweep", *FEW, "--seed", "5"], "--seed is not used by a sweep; --seeds N"),
    (["sweep", *FEW, "--op", "x+y", "--ops", "x-y"], "--op and --ops both given"),
    (["sweep", *FEW, "--weight-decay", "0", "--grid", "weight_decay=1,2"],
     "--weight-decay and --grid weight_decay both"),
    (["train", *SMALL, "--grokfast-alpha", "0.9"], "--grokfast-alpha is used only with --grokfast ema, not none"),
    (["train", *SMALL, "--grokfast", "ema", "--grokfast-window", "10"],
     "--grokfast-window is used only with --grokfast ma"),
    (["train", *SMALL, "--grokfast-lambda", "3"],
     "--grokfast-lambda is used only with --grokfast ema or ma, not none"),
    (["train", *SMALL, "--init-std", "0.1"], "--init-std is used only with --init gpt2, not torch"),
    (["sweep", *FEW[2:], "--ops", "s5:x*y", "--grid", "p=7,11"], "--grid p: the permutation operations (s5:x*y) have "
                                                                 "no modulus"),
    (["sweep", *FEW, "--grid", "grokfast_alpha=0.9,0.98"], "--grid grokfast_alpha is used only with --grokfast ema, "
                                                            "not none"),
    (["sweep", *FEW, "--grid", "grokfast=none,ema", "--grid", "grokfast_lambda=1,2"],
     "--grid grokfast_lambda is used only with --grokfast ema or ma, not none"),
    (["sweep", *FEW, "--grokfast-window", "5"], "--grokfast-window is used only with --grokfast ma, not none"),
    (["sweep", *FEW, "--preset", "modern", "--grid", "init_std=0.02,0.04", "--grid", "init=torch,gpt2"],
     "--grid init_std is used only with --init gpt2, not torch"),
    (["table", "--op", "x/y", "--p", "10"], "10 is not prime"),
    (["table", "--p", "0"], "--p must be >= 2"),
    (["table", "--op", "nope"], "invalid choice: 'nope'"),
    (["analyze", "no/such/run"], "not a run folder"),
]


@pytest.mark.parametrize("argv, message", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_and_exit_code_2_before_any_folder(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder would be made here
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("train", "sweep") else []
    code, err = run_main(["grok", *argv, *out], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grok") / "run"
    assert main(["grok", "train", *TINY, "--out", str(out)]) == 0
    return out


def damage(run: Path, name: str, how: str) -> None:
    path = run / name
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbled":
        path.write_bytes(bytes(b ^ 0x5A for b in data[:64]) + data[64:])
    elif how == "foreign tensors":  # a readable safetensors file that holds no grok state
        save_tensors(path, {"model.w": torch.zeros(3)}, {"step": 5})
    elif how == "bad value":
        saved = json.loads(data)
        saved["members"][0]["lr"] = -1
        path.write_text(json.dumps(saved))
    elif how == "no members":
        path.write_text(json.dumps({"kind": "grok.train"}))
    elif how == "a list":
        path.write_text("[1, 2]")
    elif how == "another domain":
        path.write_text(json.dumps({"kind": "muse.train", "members": "none"}))


DAMAGED = [
    ("checkpoint.safetensors", "truncated", "checkpoint.safetensors is damaged"),
    ("checkpoint.safetensors", "garbled", "checkpoint.safetensors is damaged"),
    ("checkpoint.safetensors", "foreign tensors", "checkpoint.safetensors is damaged"),
    ("config.json", "truncated", "config.json is damaged"),
    ("config.json", "garbled", "config.json is damaged"),
    ("config.json", "bad value", "config.json: lr must be > 0"),
    ("config.json", "no members", "config.json is damaged"),
    ("config.json", "a list", "config.json is damaged"),
    ("config.json", "another domain", "is a muse.train run, not a grok.train"),
]


@pytest.mark.parametrize("verb", ["train --resume", "analyze", "sweep --resume"])
@pytest.mark.parametrize("name, how, message", DAMAGED, ids=[f"{h} {n}" for n, h, _ in DAMAGED])
def test_a_damaged_or_foreign_run_folder_is_one_line(verb, name, how, message, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # so that resume reads the checkpoint
    damage(run, name, how)
    before = files(tmp_path)
    if verb == "sweep --resume":  # a train run, or anything else, is no sweep
        message = "not a grok.sweep run" if how != "another domain" else "is a muse.train run, not a grok.sweep run"
        if name == "config.json" and how in ("truncated", "garbled", "a list"):
            message = "config.json is damaged"
    if verb == "analyze" and name == "checkpoint.safetensors" and how == "foreign tensors":
        message = "holds no weights of member 0"
    code, err = run_main(["grok", *verb.split(), str(run)], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert files(tmp_path) == before  # nothing written, nothing removed


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.01"], "--lr 0.01 differs from the resumed run's 0.001"),
    (["--preset", "modern"], "--preset modern differs from the resumed run (it sets --norm pre, the run has post)"),
    (["--preset", "modern", "--norm", "post"], "--preset modern differs from the resumed run (it sets --activation"),
    (["--eval-ratio", "1.5"], "--eval-ratio 1.5 differs from the resumed run's 1.1"),
    (["--no-cuda-graph"], "--no-cuda-graph differs from the resumed run"),
    (["--steps", "20"], "--steps 20 is fewer than the 30 steps"),
    (["--out", "elsewhere"], "leave out --out"),
])
def test_a_flag_that_would_change_a_resumed_run_is_refused(flags, message, finished_run, capsys):
    before = files(finished_run)
    code, err = run_main(["grok", "train", "--resume", str(finished_run), *flags], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert files(finished_run) == before


def test_resuming_a_finished_run_says_so_and_exits_0(finished_run, capsys):
    before = files(finished_run)
    code, err = run_main(["grok", "train", "--resume", str(finished_run), "--checkpoint-seconds", "60"], capsys)
    assert code == 0 and err == [f"grok: {finished_run} has already finished; nothing to train"]
    assert files(finished_run) == before


def test_a_train_run_given_to_sweep_and_a_sweep_given_to_train_are_refused_by_kind(finished_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["grok", "sweep", *TINY, "--fracs", "0.5", "--seeds", "1", "--out", str(sweep)]) == 0
    code, err = run_main(["grok", "train", "--resume", str(sweep)], capsys)
    assert code == 2 and err == [f"nexttoken: error: {sweep} is a grok.sweep run, not a grok.train run"]
    code, err = run_main(["grok", "train", "--resume", str(sweep / "group-000")], capsys)
    assert code == 2 and err == [f"nexttoken: error: {sweep / 'group-000'} is a grok.sweep-group run, not a grok.train "
                                 f"run"]
    code, err = run_main(["grok", "sweep", "--resume", str(sweep), "--fracs", "0.6"], capsys)
    assert code == 2 and len(err) == 1 and "--fracs 0.6 differs from the resumed sweep's 0.5" in err[0]
    code, err = run_main(["grok", "sweep", "--resume", str(sweep)], capsys)
    assert code == 0 and err == [f"grok: {sweep} has already finished; nothing to train"]


@pytest.mark.parametrize("verb", ["train", "sweep"])
@pytest.mark.parametrize("where", ["an existing file", "under a file", "unwritable"])
def test_an_output_that_cannot_be_written_is_one_line(verb, where, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = {"an existing file": blocker, "under a file": blocker / "run", "unwritable": tmp_path / "ro" / "run"}[where]
    if where == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        (tmp_path / "ro").mkdir(mode=0o555)
    before = sorted(tmp_path.rglob("*"))
    seeds = ["--seeds", "1"] if verb == "sweep" else []
    code, err = run_main(["grok", verb, *TINY, *seeds, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and str(blocker if where == "an existing file" else out.parent) in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


def test_analyze_refuses_a_checkpoint_its_config_does_not_describe(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = json.loads((run / "config.json").read_text())
    saved["members"][0]["p"] = 11  # a bigger vocabulary than the checkpoint's
    (run / "config.json").write_text(json.dumps(saved))
    before = files(tmp_path)
    code, err = run_main(["grok", "analyze", str(run), "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "checkpoint.safetensors does not fit this run" in err[0], err
    assert files(tmp_path) == before


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grok") / "sweep"
    assert main(["grok", "sweep", *TINY, "--fracs", "0.5", "--seeds", "1", "--grid", "weight_decay=0,1", "--out",
                 str(out)]) == 0
    return out


@pytest.mark.parametrize("flags, message", [
    (["--grid", "lr=1"], "--grid lr=1.0: the resumed sweep has no lr grid"),
    (["--grid", "weight_decay=0"], "--grid weight_decay=0.0 differs from the resumed sweep's 0.0,1.0"),
    (["--op", "x-y"], "--op x-y differs from the resumed sweep's x+y"),
    (["--ops", "x-y"], "--ops x-y differs from the resumed sweep's x+y"),
    (["--weight-decay", "0"], "--weight-decay is swept by the resumed sweep (--grid weight_decay=0.0,1.0)"),
    (["--frac", "0.5"], "--frac is not used by a sweep"),
    (["--preset", "modern"], "--preset modern differs from the resumed run (it sets --norm pre"),
])
def test_a_flag_that_would_change_a_resumed_sweep_is_refused_by_the_flag_typed(flags, message, finished_sweep,
                                                                              capsys):
    before = files(finished_sweep)
    code, err = run_main(["grok", "sweep", "--resume", str(finished_sweep), *flags], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert files(finished_sweep) == before


def test_analyze_given_a_sweep_folder_points_to_its_groups(finished_sweep, capsys):
    code, err = run_main(["grok", "analyze", str(finished_sweep)], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"analyze one of its group-NNN folders instead, e.g. {finished_sweep / 'group-000'}" in err[0]


def test_an_s5_run_is_announced_without_a_modulus(tmp_path, capsys):
    code = main(["grok", "train", "--op", "s5:x*y", "--n-embd", "8", "--n-head", "2", "--mlp-hidden", "8", "--n-layer",
                 "1", "--steps", "1", "--frac", "0.01", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    assert capsys.readouterr().err.startswith("grok: s5:x*y, 1% training data")


@pytest.mark.parametrize("damage", [{"max_ensemble": 0}, {"processes": "x"}])
def test_a_sweep_config_with_a_damaged_shape_is_one_line(damage, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, err = run_main(["grok", "sweep", *FEW, "--out", str(out)], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **damage}))
    code, err = run_main(["grok", "sweep", "--resume", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "config.json is damaged (max_ensemble and processes" in err[0], err
