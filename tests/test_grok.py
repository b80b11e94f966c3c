import itertools
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from nexttoken.errors import UserError
from nexttoken.grok.data import OPERATIONS, lines, make_table, split, table_size, vocab_size
from nexttoken.grok.sweep import expand, median_steps, run_sweep
from nexttoken.grok.evaluate import load_member
from nexttoken.grok.ensemble import Ensemble, stablemax_cross_entropy
from nexttoken.grok.loop import eval_steps, train_ensemble
from nexttoken.grok.train import GrokConfig, train
from nexttoken.files import load_tensors
from nexttoken.runs import Run

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- data -------------------------------------------------------------------------------------------------------


def independent(op: str, x: int, y: int, p: int) -> int:
    """The same operations computed another way: division by search, powers by repeated multiplication."""
    div = next((c for c in range(p) if (c * y) % p == x), None) if y % p else None
    return {
        "x+y": (x + y) % p, "x-y": (x - y + p) % p, "x*y": (x * y) % p, "x/y": div,
        "x/y if y odd else x-y": div if y % 2 == 1 else (x - y) % p,
        "x^2+y^2": (x * x + y * y) % p, "x^2+xy+y^2": (x * x + x * y + y * y) % p,
        "x^2+xy+y^2+x": (x * x + x * y + y * y + x) % p, "x^3+xy": (x * x * x + x * y) % p,
        "x^3+xy^2+y": (x * x * x + x * y * y + y) % p,
    }[op]


@pytest.mark.parametrize("op", [o for o in OPERATIONS if not o.startswith("s5:")])
@pytest.mark.parametrize("p", [7, 13])
def test_modular_tables_against_an_independent_computation(op, p):
    table = make_table(op, p)
    pairs = {(a, b): c for (a, _, b, _), c in zip(table.inputs.tolist(), table.answers.tolist())}
    expected_pairs = [(x, y) for x in range(p) for y in range(p) if not (op == "x/y" and y == 0)]
    assert sorted(pairs) == expected_pairs
    for (x, y), c in pairs.items():
        assert c == independent(op, x, y, p), (op, x, y)


def test_s5_tables_against_numpy_permutations():
    perms = [np.array(q) for q in itertools.permutations(range(5))]
    index = {tuple(q): i for i, q in enumerate(perms)}
    inv = lambda q: np.argsort(q)  # noqa: E731
    ops = {"s5:x*y": lambda x, y: x[y], "s5:x*y*x^-1": lambda x, y: x[y][inv(x)], "s5:x*y*x": lambda x, y: x[y][x]}
    for op, fn in ops.items():
        table = make_table(op)
        assert len(table) == 120 * 120 and table.vocab_size == 122
        for (a, _, b, _), c in zip(table.inputs.tolist()[::37], table.answers.tolist()[::37]):
            assert c == index[tuple(fn(perms[a], perms[b]))]


def test_tokenisation_is_a_op_b_equals():
    table = make_table("x+y", 5)
    assert table.inputs[7].tolist() == [1, 5, 2, 6]  # 1 op 2 =  (op token 5, '=' token 6)
    assert table.answers[7].item() == 3
    assert vocab_size("x+y", 5) == table.vocab_size == 7
    assert vocab_size("s5:x*y", 97) == make_table("s5:x*y").vocab_size == 122


def test_split_is_seeded_and_disjoint():
    a_tr, a_va = split(100, 0.3, seed=4)
    b_tr, b_va = split(100, 0.3, seed=4)
    c_tr, _ = split(100, 0.3, seed=5)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_va, b_va)
    assert not torch.equal(a_tr, c_tr)
    assert len(a_tr) == 30 and len(set(a_tr.tolist()) | set(a_va.tolist())) == 100
    assert not set(a_tr.tolist()) & set(a_va.tolist())


@pytest.mark.parametrize("call, message", [
    (lambda: make_table("x^4", 7), "unknown operation"),
    (lambda: make_table("x/y", 9), "prime"),
    (lambda: split(10, 1.0, 0), "strictly between 0 and 1"),
    (lambda: split(10, 0.0, 0), "strictly between 0 and 1"),
])
def test_bad_input_is_a_user_error(call, message):
    with pytest.raises(UserError, match=message):
        call()


# ---- losses and filters -----------------------------------------------------------------------------------------


def test_stablemax_matches_its_definition():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    targets = torch.tensor([0, 1])
    s = lambda x: x + 1 if x >= 0 else 1 / (1 - x)  # noqa: E731
    for row, t, loss in zip(logits.tolist(), targets.tolist(), stablemax_cross_entropy(logits, targets).tolist()):
        assert loss == pytest.approx(-math.log(s(row[t]) / sum(s(v) for v in row)), rel=1e-6)


def tiny(**kw) -> GrokConfig:
    base = dict(op="x+y", p=7, frac=0.5, n_layer=1, n_embd=16, n_head=2, mlp_hidden=32, batch_size=8, steps=20)
    base.update(kw)
    return GrokConfig(**base)


def test_grokfast_ema_filter_matches_its_definition():
    ens = Ensemble([tiny(grokfast="ema", grokfast_alpha=0.9, grokfast_lambda=2.0, weight_decay=0.0)])
    grads = [torch.randn_like(ens.flat) for _ in range(3)]
    mu, seen = None, []
    for g in grads:  # Lee et al.: mu starts at the first gradient, then mu <- a mu + (1 - a) g; g <- g + lambda mu
        mu = g.clone() if mu is None else 0.9 * mu + 0.1 * g
        seen.append(g + 2.0 * mu)
    check_filter(ens, grads, seen)


def test_grokfast_ma_filter_matches_its_definition():
    ens = Ensemble([tiny(grokfast="ma", grokfast_window=2, grokfast_lambda=5.0, weight_decay=0.0)])
    grads = [torch.randn_like(ens.flat) for _ in range(4)]
    seen = [grads[0]] + [grads[i] + 5.0 * (grads[i - 1] + grads[i]) / 2 for i in range(1, 4)]  # once the window is full
    check_filter(ens, grads, seen)


def check_filter(ens: Ensemble, grads, expected):
    """Run the optimiser on given gradients and compare with AdamW fed the expected filtered gradients."""
    reference = ens.flat.clone().requires_grad_(True)
    opt = torch.optim.AdamW([reference], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    ens.warmup.fill_(1)
    for g, e in zip(grads, expected):
        ens.apply_gradient(g)
        reference.grad = e
        opt.step()
    assert torch.allclose(ens.flat, reference.detach(), atol=1e-6)


def test_perpendicular_gradient_has_no_component_along_the_weights():
    ens = Ensemble([tiny(perp_grad=True, weight_decay=0.0, lr=1.0, beta1=0.0, beta2=0.0, warmup_steps=1)])
    w0 = ens.flat.clone()
    ens.exp_avg_sq.fill_(0)
    g = torch.randn_like(w0)
    ens.apply_gradient(g)
    # With beta1 = beta2 = 0, Adam's step is sign-like (g / |g|); undo it to recover the gradient it used.
    used = ens.exp_avg  # the first moment equals the filtered gradient when beta1 = 0
    assert float((used * w0).sum()) == pytest.approx(0.0, abs=1e-3 * float(used.norm() * w0.norm()))


def test_l2_is_torch_adams_coupled_weight_decay():
    """l2 with no decoupled decay takes the steps torch.optim.Adam(weight_decay=l2) takes, Grokfast filter included."""
    cfg = tiny(l2=0.05, weight_decay=0.0, batch_size=0, grokfast="ema", warmup_steps=1)
    ens = Ensemble([cfg])
    model = ens.member_model(0).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.05)
    ema = None
    for _ in range(3):
        ens.step()
        model.zero_grad()
        logits, _ = model(ens.train_x[0, : int(ens.batch[0])], last_only=True)
        torch.nn.functional.cross_entropy(logits[:, 0], ens.train_y[0, : int(ens.batch[0])]).backward()
        grads = [p.grad for p in model.parameters()]
        ema = [g.clone() for g in grads] if ema is None else [0.98 * e + 0.02 * g for e, g in zip(ema, grads)]
        for g, e in zip(grads, ema):
            g.add_(2.0 * e)  # Grokfast-EMA, then Adam adds l2 * w inside its step
        opt.step()
    got = ens.member_state_dict(0)
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.detach(), atol=1e-5), name


def test_decay_toward_the_initial_weights():
    ens = Ensemble([tiny(decay_to_init=True, weight_decay=0.5, lr=1.0, warmup_steps=1)])
    init = ens.init.clone()
    ens.flat.add_(1.0)
    moved = ens.flat.clone()
    ens.exp_avg_sq.fill_(1.0)  # keep Adam's own step tiny and known
    ens.apply_gradient(torch.zeros_like(ens.flat))
    expected = moved - 0.5 * (moved - init)  # w <- w - lr * wd * (w - w0), Adam's part is 0 for a zero gradient
    assert torch.allclose(ens.flat, expected, atol=1e-6)


# ---- training ---------------------------------------------------------------------------------------------------


def test_an_ensemble_step_equals_the_single_model_step():
    """Member i of a 3-run ensemble takes exactly the step a plain GPT + torch.optim.AdamW takes on its batch."""
    configs = [tiny(seed=s, frac=f, lr=lr) for s, f, lr in [(0, 0.5, 1e-3), (1, 0.4, 3e-3), (2, 0.6, 1e-2)]]
    ens = Ensemble(configs)
    torch.manual_seed(11)
    ens.step()  # remember the batch it drew by replaying the same random stream below
    for m, cfg in enumerate(configs):
        single = Ensemble([cfg])
        model = single.member_model(0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr * 1 / cfg.warmup_steps, betas=(0.9, 0.98),
                                weight_decay=1.0)
        torch.manual_seed(11)
        keys = torch.rand(3, ens.train_x.shape[1])  # the ensemble's batch draw
        keys = keys.masked_fill(torch.arange(keys.shape[1]) >= ens.n_train[:, None], 2.0)
        rows = keys.topk(ens.B, dim=1, largest=False).indices[m, : int(ens.batch[m])]
        logits, _ = model(ens.train_x[m, rows], last_only=True)
        torch.nn.functional.cross_entropy(logits[:, 0], ens.train_y[m, rows]).backward()
        opt.step()
        got = ens.member_state_dict(m)
        for name, p in model.named_parameters():
            assert torch.allclose(got[name], p.detach(), atol=2e-6), (m, name)


def test_the_fused_adamw_kernel_takes_the_general_paths_steps():
    """Members that share their AdamW settings are stepped by PyTorch's fused kernel: the same steps, warm-up and
    decoupled decay included, as the per-member arithmetic that mixed settings use."""
    configs = [tiny(seed=s, frac=f, warmup_steps=3) for s, f in [(0, 0.5), (1, 0.4), (2, 0.6)]]
    fused, general = Ensemble(configs), Ensemble(configs)
    general.fused_adamw = None
    assert fused.fused_adamw is not None
    assert Ensemble([tiny(), tiny(lr=3e-3)]).fused_adamw is None
    assert Ensemble([tiny(), tiny(decay_to_init=True)]).fused_adamw is None
    for _ in range(4):
        grad = torch.randn_like(fused.flat)
        fused.apply_gradient(grad.clone())
        general.apply_gradient(grad.clone())
    assert float(fused.t) == float(general.t) == 4
    for a, b in [(fused.flat, general.flat), (fused.exp_avg, general.exp_avg), (fused.exp_avg_sq, general.exp_avg_sq)]:
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_evaluation_is_each_members_accuracy_and_loss_on_its_own_split():
    """Members of different operations, fractions and seeds, evaluated in small chunks, against each member's own model
    on its training and validation rows."""
    configs = [tiny(op="x/y", seed=0, frac=0.3), tiny(op="x+y", seed=1, frac=0.7), tiny(op="x-y", seed=2, frac=0.5)]
    ens = Ensemble(configs, eval_chunk=7)
    for _ in range(3):
        ens.step()
    ev = ens.evaluate()
    for m, cfg in enumerate(configs):
        table = make_table(cfg.op, cfg.p)
        model = ens.member_model(m)
        for part, acc, loss in zip(split(len(table), cfg.frac, cfg.seed), (ev.train_acc, ev.val_acc),
                                   (ev.train_loss, ev.val_loss)):
            with torch.no_grad():
                logits = model(table.inputs[part], last_only=True)[0][:, 0]
            expected_acc = (logits.argmax(-1) == table.answers[part]).float().mean()
            expected_loss = torch.nn.functional.cross_entropy(logits, table.answers[part])
            assert torch.allclose(acc[m], expected_acc) and torch.allclose(loss[m], expected_loss, atol=1e-5), (m, part)


def test_retiring_members_leaves_the_others_on_their_course():
    """Full-batch members (the same rows every step): an ensemble of three that drops its middle member after 5 steps
    trains the other two as an ensemble of those two does, Grokfast state and all."""
    configs = [tiny(seed=s, frac=f, lr=lr, batch_size=0, grokfast="ema")
               for s, f, lr in [(0, 0.5, 1e-3), (1, 0.4, 3e-3), (2, 0.6, 1e-2)]]
    three, two = Ensemble(configs), Ensemble([configs[0], configs[2]])
    for _ in range(5):
        three.step()
    three.keep([0, 2])
    assert three.E == 2 and three.flat.shape[0] == 2 and three.configs == two.configs
    for _ in range(5):
        three.step()
    for _ in range(10):
        two.step()
    for name in ("flat", "exp_avg", "exp_avg_sq", "ema"):
        # Equal up to summation order (each step visits the rows in a random order): steps move weights by ~1e-2.
        assert torch.allclose(getattr(three, name), getattr(two, name), atol=2e-5), name
    ev3, ev2 = three.evaluate(), two.evaluate()
    assert torch.allclose(ev3.val_loss, ev2.val_loss, atol=1e-5)


def test_a_sweep_retires_runs_that_reached_their_target(tmp_path):
    """A member that reaches its stop_at leaves the ensemble; its metrics stay, the other trains to its budget."""
    quick, slow = tiny(p=5, frac=0.9, lr=1e-2, stop_at=0.2, steps=200), tiny(p=5, frac=0.9, steps=200, seed=1)
    run = Run.create(tmp_path / "r", {"members": [asdict(quick), asdict(slow)]})
    sizes = []
    result = train_ensemble(Ensemble([quick, slow]), run, eval_ratio=1.5, progress=False,
                            on_eval=lambda step, ev: sizes.append(len(ev.val_acc)))
    assert sizes[0] == 2 and sizes[-1] == 1
    assert result.member_steps[0] == result.milestones.steps_to_val_99[0] or result.member_steps[0] < 200
    assert result.member_steps[1] == 200 == result.steps
    rows = run.metrics()
    assert all(len(r["val_acc"]) == 2 for r in rows)
    retired = [r["val_acc"][0] for r in rows if r["step"] >= result.member_steps[0]]
    assert len(set(retired)) == 1 and retired[0] >= 0.2  # frozen at its last evaluation
    assert float(result.final.val_acc[0]) == retired[0]


def test_a_sweep_resumes_after_a_member_retired(tmp_path):
    quick, slow = tiny(p=5, frac=0.9, lr=1e-2, stop_at=0.2, steps=200), tiny(p=5, frac=0.9, steps=200, seed=1)
    members = {"members": [asdict(quick), asdict(slow)]}
    whole = Run.create(tmp_path / "whole", members)
    train_ensemble(Ensemble([quick, slow]), whole, eval_ratio=1.5, checkpoint_every_s=0, progress=False)

    class Killed(Exception):
        pass

    def die(step, ev):
        if len(ev.val_acc) == 1:  # the first evaluation after the quick one retired (its checkpoint has one member)
            raise Killed

    part = Run.create(tmp_path / "part", members)
    with pytest.raises(Killed):
        train_ensemble(Ensemble([quick, slow]), part, eval_ratio=1.5, checkpoint_every_s=0, progress=False, on_eval=die)
    result = train_ensemble(Ensemble([quick, slow]), Run.open(part.path), resume=True, eval_ratio=1.5,
                            checkpoint_every_s=0, progress=False)
    a, b = whole.metrics(), part.metrics()
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["val_acc"] == y["val_acc"] and x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    assert result.member_steps[0] < result.member_steps[1] == 200


def test_bf16_autocasts_the_forward_and_keeps_the_weights_and_optimiser_in_fp32():
    fp32, bf16 = Ensemble([tiny()]), Ensemble([tiny(precision="bf16")])
    for ens, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        with ens.autocast():
            assert ens.logits(ens.flat, ens.train_x).dtype == dtype
    torch.manual_seed(0)
    fp32.step()
    torch.manual_seed(0)
    bf16.step()
    assert bf16.flat.dtype == bf16.exp_avg.dtype == torch.float32
    assert not torch.equal(fp32.exp_avg, bf16.exp_avg)  # gradients through bf16 products
    assert torch.allclose(fp32.exp_avg, bf16.exp_avg, atol=0.05 * fp32.exp_avg.abs().max().item())
    with pytest.raises(UserError, match="precision"):
        Ensemble([tiny(), tiny(precision="bf16")])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tiny_run_memorises_its_training_set(tmp_path, precision):
    cfg = GrokConfig(op="x+y", p=11, frac=0.5, n_embd=32, n_head=2, mlp_hidden=64, steps=300, lr=3e-3,
                     weight_decay=0.1, precision=precision)
    run = Run.create(tmp_path / "r", {"members": [asdict(cfg)]})
    summary = train(cfg, run, torch.device("cpu"), progress=False)
    assert summary["final_train_acc"] == 1.0
    assert summary["best_val_acc"] == max(r["val_acc"] for r in run.metrics())
    assert summary["steps_to_train_99"] is not None
    assert set(summary) >= {"steps_to_train_99", "steps_to_val_99", "wall_s_to_val_99", "final_train_acc",
                            "final_val_acc", "device"}
    model = load_member(run)  # the member's own GPT, rebuilt from the checkpoint, scores as the run did
    table = make_table(cfg.op, cfg.p)
    train_rows, val_rows = split(len(table), cfg.frac, cfg.seed)
    with torch.no_grad():
        predicted = model(table.inputs, last_only=True)[0][:, 0].argmax(-1) == table.answers
    assert predicted[train_rows].float().mean().item() == pytest.approx(summary["final_train_acc"])
    assert predicted[val_rows].float().mean().item() == pytest.approx(summary["final_val_acc"])


@pytest.mark.parametrize("every_s, every_steps", [(0, 0), (1e9, 0), (1e9, 50)],
                         ids=["a checkpoint at every evaluation", "only the first evaluation's", "by steps"])
def test_resume_gives_the_same_run(tmp_path, every_s, every_steps):
    """Killed at an evaluation, after logging it and before its checkpoint: the resumed run drops what was logged after
    its checkpoint (the previous evaluation's; the first evaluation's when that is the only one; step 64's, between
    evaluations, when 50 steps have passed since the last) and logs it again."""
    cfg = tiny(steps=150, dropout=0.1, weight_noise=0.01)
    kw = dict(eval_ratio=1.5, progress=False)

    full = Run.create(tmp_path / "full", {"members": [asdict(cfg)]})
    train_ensemble(Ensemble([cfg]), full, checkpoint_every_s=0, **kw)

    part = Run.create(tmp_path / "part", {"members": [asdict(cfg)]})

    class Killed(Exception):
        pass

    def die(step, ev):
        if step >= (100 if every_steps else 30):
            raise Killed

    with pytest.raises(Killed):
        train_ensemble(Ensemble([cfg]), part, checkpoint_every_s=every_s, checkpoint_every=every_steps, on_eval=die, **kw)
    saved_at = load_tensors(part.checkpoint_path)[1]["step"]
    assert saved_at == {(0, 0): 20, (1e9, 0): 10, (1e9, 50): 64}[every_s, every_steps]
    torch.manual_seed(999)  # resuming must not depend on the process's RNG
    train_ensemble(Ensemble([cfg]), part, resume=True, checkpoint_every_s=0, **kw)
    a, b = full.metrics(), part.metrics()
    assert [r["step"] for r in a] == [r["step"] for r in b] == eval_steps(150, 1.5)
    for x, y in zip(a, b):
        assert x["val_acc"] == y["val_acc"] and x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)


def test_sweep_trains_groups_and_writes_the_figures(tmp_path):
    grid = {"op": ["x+y", "x-y"], "frac": [0.4, 0.6], "seed": [0, 1]}
    configs = expand(tiny(steps=30), grid)
    configs.insert(4, tiny(steps=30, dropout=0.1))  # the dropout run needs its own group
    rows = run_sweep(configs, grid, tmp_path, torch.device("cpu"), progress=False)
    assert len(rows) == 9 and len(list(tmp_path.glob("group-*"))) == 2
    assert [(r["op"], r["frac"], r["seed"]) for r in rows] == [(c.op, c.frac, c.seed) for c in configs]  # in order
    from nexttoken.grok.sweep import write_results

    summary = write_results(rows, tmp_path, 30, {})
    assert (tmp_path / "steps_to_val_99.png").exists() and (tmp_path / "best_val_acc.png").exists()
    assert summary["runs"] == 9


def test_eval_schedule_and_median():
    steps = eval_steps(1_000_000)
    assert steps[0] == 10 and steps[-1] == 1_000_000 and len(steps) < 700
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert median_steps([5, None, 7]) == 7


# ---- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_train_analyze_and_table(tmp_path, capsys):
    from nexttoken.cli import main

    out = tmp_path / "run"
    assert main(["grok", "train", "--op", "x+y", "--p", "7", "--steps", "40", "--n-embd", "16", "--n-head", "2",
                 "--mlp-hidden", "32", "--snapshots", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "summary.json").exists() and (out / "curves.png").exists()
    assert len(list((out / "checkpoints").glob("step-*.safetensors"))) == 3
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "grok.train" and saved["snapshots"] == 3 and saved["eval_ratio"] == 1.1
    assert main(["grok", "analyze", str(out), "--device", "cpu"]) == 0
    for name in ("unembedding_map.png", "fourier_spectrum.png", "key_frequency_circle.png", "progress_measures.png"):
        assert (out / name).exists(), name
    log = (out / "log.txt").read_text()  # long work shows progress, named by the run folder
    assert "train run: step 40/40" in log and "analyze: progress measures: snapshot 3/3" in log
    capsys.readouterr()
    assert main(["grok", "table", "--op", "x-y", "--p", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0 x-y 0 = 0", "0 x-y 1 = 2", "0 x-y 2 = 1", "1 x-y 0 = 1",
                                                    "1 x-y 1 = 0", "1 x-y 2 = 2", "2 x-y 0 = 2", "2 x-y 1 = 1",
                                                    "2 x-y 2 = 0"]


def test_the_table_verb_streams_the_lines_the_table_holds():
    for op, p in [("x/y", 7), ("x^3+xy^2+y", 5), ("s5:x*y*x^-1", 0)]:
        assert list(lines(op, p or 97)) == list(make_table(op, p or 97).lines())
        assert table_size(op, p or 97) == len(make_table(op, p or 97))


def test_help_shows_what_each_preset_changes(capsys):
    from nexttoken.cli import main

    with pytest.raises(SystemExit):
        main(["grok", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default post; modern: pre; nanda: none)" in text and "(default 97; nanda: 113;" in text
    assert "--no-cuda-graph" in text and "--no-tf32" in text  # the old spellings still work


def test_an_old_run_without_kind_or_saved_schedule_resumes(tmp_path, capsys):
    """Run folders written before runs named their kind: recognised by their members, the evaluation ratio taken as
    the device's default (what they were trained with), and the config upgraded on resume."""
    from nexttoken.cli import main

    cfg = tiny(steps=30)
    run = Run.create(tmp_path / "old", {"members": [asdict(cfg)], "snapshots": 0})
    run.close()
    assert main(["grok", "train", "--resume", str(run.path), "--device", "cpu"]) == 0
    saved = json.loads((run.path / "config.json").read_text())
    assert saved["kind"] == "grok.train" and saved["eval_ratio"] == 1.1
    assert [r["step"] for r in run.metrics()] == eval_steps(30, 1.1)
