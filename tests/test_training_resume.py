"""The training loop's run folder: a killed or interrupted run resumes to the uninterrupted result, a folder is
claimed once, and damaged checkpoints, configs, metrics and summaries are one clear error."""

import json

import pytest
import torch

from charlm import FakeClock, batch_fn, char_model, eval_loss
from nexttoken.errors import UserError
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, fit


class Killed(Exception):
    pass


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """Train 2N steps == train N, get killed, resume: identical metrics and weights (dropout RNG included)."""
    optim = OptimConfig(lr=3e-3, warmup_steps=5)
    loop = LoopConfig(steps=40, batch_size=8, eval_every=10, ckpt_every=20)
    whole = Run.create(tmp_path / "whole", {"x": 1})
    model_a = char_model(dropout=0.1)
    fit(model_a, batch_fn(32, 8), optim, loop, whole, eval_fn=eval_loss)

    part = Run.create(tmp_path / "part", {"x": 1})
    base = batch_fn(32, 8)

    def dying(step):
        if step == 25:  # after the checkpoint at 20 and the metrics line at 20... killed mid-way to 30
            raise Killed
        return base(step)

    with pytest.raises(Killed):
        fit(char_model(dropout=0.1), dying, optim, loop, part, eval_fn=eval_loss)
    # A killed run may leave a half-written line behind; it must not survive the resume.
    with open(part.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "train_lo')
    part.close()  # the killed process's lock goes with it
    model_b = char_model(dropout=0.1, seed=123)  # different init: everything must come from the checkpoint
    fit(model_b, base, optim, loop, Run.resume(part.path), eval_fn=eval_loss, resume=True)

    ra, rb = whole.metrics(), Run.open(part.path).metrics()
    assert [r["step"] for r in rb] == [10, 20, 30, 40]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_loss", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_checkpoint_is_atomic_and_loadable(tmp_path):
    run = Run.create(tmp_path / "r", {"a": 1})
    model = char_model()
    run.save_checkpoint(model, None, 7, snapshot=True)
    assert not list(run.path.glob(".*tmp"))  # no temporary files left behind
    assert run.checkpoint_path.stat().st_mode & 0o044  # readable by others, like any file the user writes
    other = char_model(seed=5)
    step, _, _ = run.load_checkpoint(other)
    assert step == 7
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert [s for s, _ in run.snapshots()] == [7]
    assert json.loads((run.path / "config.json").read_text()) == {"a": 1}


def test_a_run_folder_is_claimed_once(tmp_path):
    first = Run.create(tmp_path / "r", {"a": 1})
    with pytest.raises(UserError, match="in use by another"):  # while the first one runs
        Run.create(tmp_path / "r", {"a": 2})
    with pytest.raises(UserError, match="in use by another"):
        Run.resume(tmp_path / "r")
    first.close()
    with pytest.raises(UserError, match="already holds a run"):  # and after it ended
        Run.create(tmp_path / "r", {"a": 2})
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"a": 1}


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(UserError):
        with Run.create(tmp_path / "new", {"a": 1}, kind="test.train"):
            raise UserError("the corpus is empty")
    assert not (tmp_path / "new").exists()
    with Run.create(tmp_path / "new", {"a": 2}, kind="test.train") as run:  # the corrected command may use it
        run.log({"step": 1})
    with pytest.raises(RuntimeError):
        with Run.resume(tmp_path / "new", kind="test.train"):
            raise RuntimeError("a crash after the run had started")
    assert (tmp_path / "new" / "config.json").exists()  # a started run is kept for --resume


def test_a_run_of_another_kind_is_refused_by_name(tmp_path):
    Run.create(tmp_path / "r", {"a": 1}, kind="grok.train").close()
    with pytest.raises(UserError, match="grok.train run, not a muse.train run"):
        Run.resume(tmp_path / "r", kind="muse.train")


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_a_damaged_checkpoint_or_config_is_one_clear_error(tmp_path, damage):
    run = Run.create(tmp_path / "r", {"a": 1})
    run.save_checkpoint(char_model(), None, 3)
    good = run.checkpoint_path.read_bytes()
    run.checkpoint_path.write_bytes(damage or good[: len(good) // 2])
    with pytest.raises(UserError, match="checkpoint.safetensors is damaged"):
        run.load_checkpoint(char_model())
    (run.path / "config.json").write_text('{"a": 1,')
    with pytest.raises(UserError, match="config.json is damaged"):
        Run.open(run.path)


def test_sigint_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Ctrl-C (or SIGTERM) mid-run: the step finishes, a checkpoint is written, Interrupted is raised; --resume then
    ends exactly where the uninterrupted run does, with no step logged twice."""
    import os
    import signal

    from nexttoken.errors import Interrupted

    optim = OptimConfig(lr=3e-3, warmup_steps=5)
    loop = LoopConfig(steps=30, batch_size=8, eval_every=10, ckpt_every=1000)
    whole = Run.create(tmp_path / "whole", {"x": 1})
    model_a = char_model()
    fit(model_a, batch_fn(32, 8), optim, loop, whole, eval_fn=eval_loss)

    base = batch_fn(32, 8)

    def interrupted_at_13(step):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)
        return base(step)

    part = Run.create(tmp_path / "part", {"x": 1})
    with pytest.raises(Interrupted, match="stopped at step 14"):
        fit(char_model(), interrupted_at_13, optim, loop, part, eval_fn=eval_loss)
    part.close()
    model_b = char_model(seed=7)
    fit(model_b, base, optim, loop, Run.resume(part.path), eval_fn=eval_loss, resume=True)
    ra, rb = whole.metrics(), Run.open(part.path).metrics()
    assert [r["step"] for r in rb] == [10, 20, 30]
    for x, y in zip(ra, rb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model_a.parameters(), model_b.parameters()))


def test_fit_reports_the_training_time_of_every_stretch_of_a_resumed_run(tmp_path):
    """A run stopped by Ctrl-C and resumed (then resumed again, finished) reports the seconds of all its training,
    not those of the last stretch: the time between the stretches does not count."""
    import os
    import signal

    from nexttoken.errors import Interrupted

    clock = FakeClock()
    base = clock.batches(0.5)

    def interrupted_at_13(step):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)
        return base(step)

    optim, loop = OptimConfig(warmup_steps=1), LoopConfig(steps=20, batch_size=8, eval_every=10, ckpt_every=1000)
    run = Run.create(tmp_path / "r", {"x": 1})
    with pytest.raises(Interrupted, match="stopped at step 14"):
        fit(char_model(), interrupted_at_13, optim, loop, run, clock=clock)
    run.close()
    clock.now += 3600  # an hour before the resume
    with Run.resume(run.path) as resumed:
        result = fit(char_model(), base, optim, loop, resumed, resume=True, clock=clock)
    assert result.steps == 20 and result.seconds == pytest.approx(20 * 0.5)
    with Run.resume(run.path) as resumed:
        again = fit(char_model(), base, optim, loop, resumed, resume=True, clock=clock)
    assert again.seconds == pytest.approx(20 * 0.5)  # a finished run reports the same


def test_resume_before_the_first_checkpoint_starts_over_without_repeating_steps(tmp_path):
    run = Run.create(tmp_path / "r", {"x": 1})
    run.log({"step": 10, "train_loss": 9.0})  # logged by a process killed before it wrote a checkpoint
    run.close()
    loop = LoopConfig(steps=20, batch_size=8, eval_every=10, ckpt_every=10)
    fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1), loop, Run.resume(run.path), resume=True)
    steps = [r["step"] for r in Run.open(run.path).metrics()]
    assert steps == [10, 20]


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    run = Run.create(tmp_path / "r", {"x": 1})
    loop = LoopConfig(steps=10, batch_size=8, eval_every=5, ckpt_every=5)
    first = fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1), loop, run)
    run.close()
    model = char_model(seed=3)
    again = fit(model, batch_fn(32, 8), OptimConfig(warmup_steps=1), loop, Run.resume(run.path), resume=True)
    assert again.record == first.record and again.steps == 10
    assert [r["step"] for r in Run.open(run.path).metrics()] == [5, 10]


def test_resuming_a_finished_run_with_more_steps_trains_on_as_one_longer_run(tmp_path):
    loop = LoopConfig(steps=20, batch_size=8, eval_every=5, ckpt_every=5)
    whole = Run.create(tmp_path / "whole", {"x": 1})
    fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1, schedule="constant"), loop, whole)
    run = Run.create(tmp_path / "r", {"x": 1})
    short = LoopConfig(steps=10, batch_size=8, eval_every=5, ckpt_every=5)
    fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1, schedule="constant"), short, run)
    run.close()
    more = fit(char_model(seed=3), batch_fn(32, 8), OptimConfig(warmup_steps=1, schedule="constant"), loop,
               Run.resume(run.path), resume=True)
    assert more.steps == 20 and [r["step"] for r in Run.open(run.path).metrics()] == [5, 10, 15, 20]
    assert more.record["train_loss"] == pytest.approx(whole.metrics()[-1]["train_loss"], rel=1e-5)


def test_more_steps_on_resume_are_trained_under_a_time_budget_too(tmp_path):
    """A run planned within a time budget, resumed with a higher step cap: it trains on (the budget still has room)
    instead of calling itself finished."""
    run = Run.create(tmp_path / "r", {"x": 1})
    fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1),
        LoopConfig(steps=10, batch_size=8, eval_every=5, ckpt_every=5, max_seconds=600), run)
    run.close()
    more = fit(char_model(seed=3), batch_fn(32, 8), OptimConfig(warmup_steps=1),
               LoopConfig(steps=20, batch_size=8, eval_every=5, ckpt_every=5, max_seconds=600), Run.resume(run.path),
               resume=True)
    assert more.steps == 20 and [r["step"] for r in Run.open(run.path).metrics()] == [5, 10, 15, 20]


def test_a_budgeted_run_resumed_without_more_steps_says_it_has_nothing_to_train(tmp_path, capsys):
    run = Run.create(tmp_path / "r", {"x": 1})
    loop = LoopConfig(steps=10, batch_size=8, eval_every=5, ckpt_every=5, max_seconds=600)
    fit(char_model(), batch_fn(32, 8), OptimConfig(warmup_steps=1), loop, run)
    run.close()
    capsys.readouterr()
    again = fit(char_model(seed=3), batch_fn(32, 8), OptimConfig(warmup_steps=1), loop, Run.resume(run.path),
                resume=True)
    err = capsys.readouterr().err
    assert again.steps == 10 and "has finished its 10 steps" in err and "nothing to train" in err


def test_a_resume_that_fails_before_training_keeps_the_run(tmp_path):
    Run.create(tmp_path / "r", {"a": 1}).close()  # killed before its first checkpoint or record
    with pytest.raises(RuntimeError):
        with Run.resume(tmp_path / "r"):
            raise RuntimeError("the resumed start failed too")
    assert (tmp_path / "r" / "config.json").exists()


def test_a_damaged_metrics_line_is_refused_and_the_file_left_as_it_was(tmp_path):
    run = Run.create(tmp_path / "r", {"x": 1})
    for step in (10, 20, 30):
        run.log({"step": step, "train_loss": 1.0 / step})
    path = run.path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        run.rewind_metrics(20)  # what a resume does: it must not drop the damaged line unseen
    assert path.read_bytes() == before
    path.write_text("\n".join([lines[0], '{"step": "twenty"}', *lines[1:]]) + "\n")  # a record whose step is no step
    with pytest.raises(UserError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        run.rewind_metrics(20)
    path.write_text("\n".join(lines) + '\n{"step": 40, "train_lo')  # a kill's half-written last line is no damage
    assert [r["step"] for r in run.metrics()] == [10, 20, 30]
    run.close()


@pytest.mark.parametrize("summary", ["[]", '{"steps": "x"}'])
def test_a_damaged_summary_of_a_finished_run_is_refused_on_resume(tmp_path, summary):
    from nexttoken.training import nothing_to_train

    (tmp_path / "summary.json").write_text(summary)
    with pytest.raises(UserError, match="summary.json is damaged"):
        nothing_to_train(tmp_path, 10)


def test_claiming_a_run_removes_the_temporary_files_a_killed_write_left(tmp_path):
    run = Run.create(tmp_path / "r", {"x": 1})
    run.close()
    (run.path / "checkpoints").mkdir()
    left = [run.path / ".checkpoint.safetensors.k3j2.tmp", run.path / "checkpoints" / ".step-0000010.safetensors.x.tmp"]
    for p in left:
        p.write_bytes(b"half")
    kept = run.path / "notes.tmp"  # not one of ours: left alone
    kept.write_text("mine")
    Run.resume(run.path).close()
    assert not any(p.exists() for p in left) and kept.exists()


@pytest.mark.parametrize("meta", [{}, {"step": "abc"}, {"step": -1}])
def test_a_checkpoint_with_a_damaged_step_is_one_clear_error(meta, tmp_path):
    from nexttoken.files import load_tensors, save_tensors

    run = Run.create(tmp_path / "r", {"x": 1})
    model = torch.nn.Linear(2, 2)
    run.save_checkpoint(model, None, 5)
    tensors, saved = load_tensors(run.checkpoint_path)
    save_tensors(run.checkpoint_path, tensors, {**{k: v for k, v in saved.items() if k != "step"}, **meta})
    with pytest.raises(UserError, match="checkpoint.safetensors is damaged"):
        run.load_checkpoint(model)
    run.close()


def test_a_new_run_is_not_made_among_other_files(tmp_path):
    """A folder of the user's own files (the audio to train on, say) is left as it was: not a place for a run."""
    (tmp_path / "take1.wav").write_bytes(b"RIFF")
    with pytest.raises(UserError, match=r"holds other files \(take1.wav\); a new run starts in a new or empty folder"):
        Run.create(tmp_path, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["take1.wav"]
    Run.create(tmp_path / "empty", {"a": 1}).close()  # a new folder, or an empty one, is claimed
    (tmp_path / "empty2").mkdir()
    Run.create(tmp_path / "empty2", {"a": 1}).close()


def test_a_resume_refused_before_its_next_checkpoint_puts_the_plan_back(tmp_path):
    model = torch.nn.Linear(2, 2)
    run = Run.create(tmp_path / "r", {"loop": {"steps": 10}})
    run.save_checkpoint(model, None, 10)
    run.close()
    with pytest.raises(UserError):
        with Run.resume(run.path) as again:
            again.amend({"loop": {"steps": 600}})
            raise UserError("the checkpoint does not fit")  # what a loop's load may say
    assert Run.open(run.path).config["loop"] == {"steps": 10}
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: the printed command continues the new plan
        with Run.resume(run.path) as again:
            again.amend({"loop": {"steps": 600}})
            raise KeyboardInterrupt
    assert Run.open(run.path).config["loop"] == {"steps": 600}
    with pytest.raises(UserError):
        with Run.resume(run.path) as again:
            again.amend({"loop": {"steps": 900}})
            again.save_checkpoint(model, None, 20)  # trained on: the plan it trained under stays
            raise UserError("a later failure")
    assert Run.open(run.path).config["loop"] == {"steps": 900}
