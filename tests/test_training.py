"""The training loop: it learns, accumulates gradients, prefetches batches, keeps a time budget, follows its
schedule, takes any objective, and reads nothing from the device between evaluations."""

import sys

import pytest
import torch

from charlm import FakeClock, batch_fn, char_model, eval_loss, unigram_entropy
from nexttoken.errors import UserError
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, fit, lr_factor, param_groups


def test_char_model_learns_below_unigram_entropy():
    model = char_model()
    optim = OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.0)
    loop = LoopConfig(steps=300, batch_size=32, eval_every=100, ckpt_every=100)
    record = fit(model, batch_fn(32, 32), optim, loop, eval_fn=eval_loss).record
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
    clock = FakeClock()
    run = Run.create(tmp_path / "r", {"x": 1})
    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=10, ckpt_every=10, max_seconds=3.0)
    result = fit(char_model(), clock.batches(0.05), OptimConfig(lr=1e-3, warmup_steps=1), loop, run,
                 eval_fn=eval_loss, clock=clock)
    assert result.steps == 60 and result.record["step"] == 60  # 3 s at 50 ms a step
    assert loop.steps == 10_000  # the caller's config is left alone
    assert run.metrics()[-1]["step"] == 60
    step, _, _ = run.load_checkpoint(char_model(), restore_rng_state=False)
    assert step == 60
    assert result.record["lr"] < 0.5e-3  # the cosine decayed over the planned steps, not over 10,000
    # the progress lines name the run folder: a pipeline's stages train one after another in one terminal
    assert "train r: step 60/60 (100%)" in (run.path / "log.txt").read_text()


def test_a_time_budget_of_a_few_slow_steps_ends_on_time_with_the_lr_decayed():
    clock = FakeClock()
    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=100, ckpt_every=100, max_seconds=1.5)
    result = fit(char_model(), clock.batches(0.25), OptimConfig(lr=1e-3, warmup_steps=1), loop, eval_fn=eval_loss,
                 clock=clock)
    assert result.steps == 6 and result.record["step"] == 6 and clock.now == pytest.approx(1.5)
    assert result.record["lr"] < 0.5e-3


def test_a_budgeted_runs_progress_counts_towards_the_steps_its_first_step_fits(capsys):
    """Before the pace is known the bar would count towards ``loop.steps`` (hours left for a budget of minutes)."""
    clock = FakeClock()
    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=100, ckpt_every=100, max_seconds=60)
    fit(char_model(), clock.batches(6.0), OptimConfig(lr=1e-3, warmup_steps=1), loop, eval_fn=eval_loss, clock=clock)
    first = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: step 1/")]
    assert first and first[0].startswith("train: step 1/10 (10%)") and "54s left" in first[0], first


def test_a_budget_its_first_step_overruns_never_shows_more_steps_done_than_planned(capsys):
    """The first step pays for warm-up; the next step runs whatever it suggests, so the bar never reads 2/1."""
    clock = FakeClock()
    loop = LoopConfig(steps=10_000, batch_size=8, eval_every=100, ckpt_every=100, max_seconds=5)
    result = fit(char_model(), clock.batches(6.0), OptimConfig(lr=1e-3, warmup_steps=1), loop, eval_fn=eval_loss,
                 clock=clock)
    counts = [line.split()[2].split("/") for line in capsys.readouterr().err.splitlines()
              if line.startswith("train: step")]
    assert result.steps == 2 and counts and all(int(n) <= int(total) for n, total in counts), counts


def test_parameters_change_after_a_step():
    model = char_model()
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, batch_fn(32, 4), OptimConfig(lr=1e-3, warmup_steps=1),
        LoopConfig(steps=1, batch_size=4, eval_every=1, ckpt_every=1))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


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
    with pytest.raises(UserError, match=r"^--batch-size 10 must divide evenly into --grad-accum 3 micro-batches$"):
        LoopConfig(batch_size=10, grad_accum=3).validate()
    with pytest.raises(UserError, match=r"^--batch-size 8 must divide evenly into 3 processes x --grad-accum 1 "):
        LoopConfig(batch_size=8).validate(world_size=3)


def test_a_custom_objective_trains():
    """The loop takes any loss: here mean squared error summed over rows, divided by the rows of the batch."""
    from nexttoken.training import count_rows

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

    def batches(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=g)
        return {"x": x, "y": x @ w.T}

    def mse(m, batch):
        err = (m(batch["x"]) - batch["y"]).pow(2).sum()
        return err, {"abs_err": (m(batch["x"]) - batch["y"]).abs().sum().detach()}

    result = fit(model, batches, OptimConfig(lr=0.05, warmup_steps=1, weight_decay=0.0),
                 LoopConfig(steps=200, batch_size=16, eval_every=100, ckpt_every=100),
                 loss_fn=mse, weight_fn=count_rows)
    assert result.record["train_loss"] < 0.05 and "train_abs_err" in result.record
    assert torch.allclose(model.weight, w, atol=0.1)


@pytest.mark.parametrize("betas", ["x", [0.9], [0.9, "a"], [[0.9], 0.95]])
def test_a_saved_config_with_a_value_of_the_wrong_shape_is_one_clear_error(betas):
    from nexttoken.config import load

    with pytest.raises(UserError, match=r"^run/config.json: .*betas must be a tuple\[float, float\], not "):
        load(OptimConfig, {"betas": betas}, "run/config.json")


def test_a_gpu_preset_on_the_cpu_is_one_warning_before_the_work(capsys):
    from nexttoken.training import check_preset_device

    for preset in ("cpu", None, "demo"):
        check_preset_device(preset, "cpu")
    assert capsys.readouterr().err == ""
    check_preset_device("gpu", "cpu")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nexttoken: warning: --preset gpu on the CPU")


def test_the_loop_reads_no_value_from_the_device_between_evaluations(monkeypatch):
    """Reading a GPU value waits for the GPU: the loss and the logs are summed on the device and read when logged, so
    the reads of a run do not grow with its steps."""
    from nexttoken.training import count_rows

    reads = []

    def counted(real):
        def read(self, *args):
            # AdamW on the CPU reads its step counter, a CPU tensor; on CUDA the fused kernel does not
            if "torch/optim/" not in sys._getframe(1).f_code.co_filename:
                reads.append(real.__name__)
            return real(self, *args)
        return read

    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))

    def mse(m, batch):
        err = m(batch["x"]) - batch["y"]
        return err.pow(2).sum(), {"abs_err": err.abs().sum().detach()}

    def batches(step):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        return {"x": x, "y": x.sum(1, keepdim=True)}

    counts = []
    for steps in (3, 30):
        reads.clear()
        fit(torch.nn.Linear(4, 1), batches, OptimConfig(warmup_steps=1), LoopConfig(steps=steps, batch_size=8,
            grad_accum=2, eval_every=1000), loss_fn=mse, weight_fn=count_rows, progress=False)
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 4, counts
