import json

import pytest
import torch

from charlm import CHARS, batch_fn, unigram_entropy
from nexttoken.errors import UserError
from nexttoken.model import GPT, GPTConfig
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, fit, lr_factor, param_groups


def char_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(CHARS), block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=dropout))


def eval_loss(model):
    b = batch_fn(32, 64, seed=99)(0)
    return {"val_loss": model(b["idx"], b["targets"])[1].item()}


def test_char_model_learns_below_unigram_entropy():
    model = char_model()
    optim = OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.0)
    loop = LoopConfig(steps=300, batch_size=32, eval_every=100, ckpt_every=100)
    record = fit(model, batch_fn(32, 32), optim, loop, eval_fn=eval_loss)
    h = unigram_entropy()
    assert record["val_loss"] < 0.7 * h, (record, h)


def test_gradient_accumulation_equals_the_full_batch():
    """8 micro-batches of 1 row give the same update as one batch of 8 (TRL's invariance test)."""
    results = []
    for accum in (1, 8):
        model = char_model()
        fit(model, batch_fn(32, 8), OptimConfig(lr=1e-2, warmup_steps=1), LoopConfig(steps=3, batch_size=8,
            grad_accum=accum, eval_every=3, ckpt_every=3))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_prefetching_workers_train_exactly_as_the_loop_does():
    """Batches built ahead by worker processes are the loop's own batches: the same weights to the bit."""
    results = []
    for workers in (0, 2):
        model = char_model()
        fit(model, batch_fn(32, 8), OptimConfig(lr=1e-2, warmup_steps=1),
            LoopConfig(steps=6, batch_size=8, eval_every=3, ckpt_every=3, workers=workers))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_a_dead_batch_worker_does_not_stop_training(capsys):
    """A worker killed mid-run (out of memory, say): the loop builds the batches itself and trains the same."""
    import os

    parent, base = os.getpid(), batch_fn(32, 8)

    def dying_in_workers(step):
        if step == 3 and os.getpid() != parent:
            os._exit(1)
        return base(step)

    results = []
    for workers, fn in ((0, base), (2, dying_in_workers)):
        model = char_model()
        fit(model, fn, OptimConfig(lr=1e-2, warmup_steps=1),
            LoopConfig(steps=6, batch_size=8, eval_every=3, ckpt_every=3, workers=workers))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert "batch workers stopped" in capsys.readouterr().err


def test_time_budget_plans_the_steps_and_ends_with_a_checkpoint(tmp_path):
    """With max_seconds the loop plans how many steps fit, stops there with an evaluation and a checkpoint, and the
    LR schedule ends at that step."""
    import time

    slow = batch_fn(32, 8)

    def batches(step):
        time.sleep(0.05)
        return slow(step)

    run = Run.create(tmp_path / "r", {"x": 1})
    # About 50 steps fit 3 s; a loaded machine fits fewer, but more than the 11 it takes to plan.
    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=10, ckpt_every=10, max_seconds=3.0)
    t0 = time.time()
    record = fit(char_model(), batches, OptimConfig(lr=1e-3, warmup_steps=1), loop, run, eval_fn=eval_loss)
    assert time.time() - t0 < 8  # 3 s of budget, the planning steps and a last evaluation
    assert 11 < loop.steps <= 60 and record["step"] == loop.steps
    assert run.metrics()[-1]["step"] == loop.steps
    step, _, _ = run.load_checkpoint(char_model(), restore_rng_state=False)
    assert step == loop.steps
    assert record["lr"] < 0.5e-3  # the cosine decayed over the planned steps, not over 10,000


def test_a_time_budget_of_a_few_slow_steps_ends_on_time_with_the_lr_decayed():
    import time

    slow = batch_fn(32, 8)

    def batches(step):
        time.sleep(0.25)
        return slow(step)

    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=100, ckpt_every=100, max_seconds=1.5)  # ~6 steps
    t0 = time.time()
    record = fit(char_model(), batches, OptimConfig(lr=1e-3, warmup_steps=1), loop, eval_fn=eval_loss)
    assert time.time() - t0 < 3 and 2 <= loop.steps <= 7 and record["step"] == loop.steps
    assert record["lr"] < 0.5e-3


def test_parameters_change_after_a_step():
    model = char_model()
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, batch_fn(32, 4), OptimConfig(lr=1e-3, warmup_steps=1), LoopConfig(steps=1, batch_size=4, eval_every=1, ckpt_every=1))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


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
    model_b = char_model(dropout=0.1, seed=123)  # different init: everything must come from the checkpoint
    fit(model_b, base, optim, loop, Run.open(part.path), eval_fn=eval_loss, resume=True)

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


def test_new_run_refuses_to_overwrite(tmp_path):
    Run.create(tmp_path / "r", {"a": 1})
    with pytest.raises(UserError, match="already holds a run"):
        Run.create(tmp_path / "r", {"a": 2})


def test_param_groups_decay_choice():
    model = char_model()
    n = sum(1 for _ in model.parameters())
    assert [len(g["params"]) for g in param_groups(model, 1.0, "all")] == [n]
    groups = param_groups(model, 1.0, "matrices")
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0


def test_lr_schedule():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(99, 100, cfg) == pytest.approx(0.1, abs=0.01)
    assert lr_factor(50, 100, OptimConfig(warmup_steps=10, schedule="constant")) == 1.0


def test_bad_loop_config_is_a_user_error():
    with pytest.raises(UserError):
        LoopConfig(batch_size=10, grad_accum=3).validate()
