"""The loop that trains an ``Ensemble`` in a run folder: the evaluation schedule, the milestones each member reaches,
snapshots, checkpoints and exact resume.

Evaluation follows a log-spaced schedule, so a 1e6-step run costs a few hundred evaluations, each scoring every
member's whole table once. Checkpoints are written after the first evaluation, every ``checkpoint_every_s`` seconds
(and ``checkpoint_every`` steps), at the end, and when Ctrl-C or SIGTERM asks the run to stop; a resumed run drops the
metrics logged after its checkpoint and ends exactly as an uninterrupted run does.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from nexttoken.errors import Interrupted, UserError
from nexttoken.grok.ensemble import Ensemble, SplitScores
from nexttoken.progress import Progress
from nexttoken.files import load_tensors, restore_rng, rng_tensors, save_tensors
from nexttoken.runs import Run
from nexttoken.training import StopRequests


# ---- evaluation schedule ----------------------------------------------------------------------------------------
def eval_steps(budget: int, ratio: float = 1.02, first: int = 10) -> list[int]:
    """Steps after which to evaluate: every ``first`` steps at the start, then geometrically (about 2% apart), and the
    last step. A 1e6-step run is evaluated about 600 times.

    >>> eval_steps(100, ratio=1.5)
    [10, 20, 30, 45, 68, 100]
    """
    out, s = [], first
    while s < budget:
        out.append(s)
        s = max(s + first, round(s * ratio))
    return out + [budget]


def default_eval_ratio(device: torch.device, members: int = 1) -> float:
    """How far apart evaluations are (see ``eval_steps``): an evaluation scores the whole table against a step's few
    hundred rows, so it costs several steps where the hardware is busy (a CPU, or a GPU an ensemble fills) and next to
    nothing where one run leaves a GPU bound by kernel launches (docs/grok.md).

    >>> default_eval_ratio(torch.device("cpu")), default_eval_ratio(torch.device("cuda"), members=128)
    (1.1, 1.05)
    """
    if device.type != "cuda":
        return 1.1
    return 1.02 if members <= 16 else 1.05


def snapshot_schedule(budget: int, count: int) -> set[int]:
    """``count`` log-spaced steps in [10, budget] at which to keep the weights for progress measures."""
    if count <= 0:
        return set()
    return {round(10 ** (1 + i * (math.log10(max(budget, 11)) - 1) / max(count - 1, 1))) for i in range(count)}


# ---- the training loop ------------------------------------------------------------------------------------------
@dataclass
class Milestones:
    """Per member: first steps (and seconds since the first step) at 99% train / validation accuracy, and the best
    validation accuracy seen at any evaluation."""

    steps_to_train_99: list
    steps_to_val_99: list
    wall_s_to_val_99: list
    best_val_acc: list


@dataclass
class TrainResult:
    milestones: Milestones
    final: SplitScores
    steps: int  # steps taken (less than the budget after an early stop)
    wall_s: float  # since the first step, resumed stretches included
    capture_s: float  # of which CUDA-graph warm-up and capture (this process)
    eval_s: float  # of which evaluations, with the one read-back each needs (this process)
    save_s: float  # of which checkpoints (this process)
    member_steps: list[int]  # steps each member trained (fewer for one retired early)
    finished_before: bool = False  # a resumed run that had already finished: nothing was trained


EVAL_KEYS = ("train_acc", "train_loss", "val_acc", "val_loss")


def train_ensemble(
    ens: Ensemble,
    run: Run | None = None,
    *,
    resume: bool = False,
    snapshot_steps: set[int] | None = None,
    eval_ratio: float = 1.02,
    checkpoint_every_s: float = 60.0,
    checkpoint_every: int = 0,
    use_cuda_graph: bool = True,
    progress: bool = True,
    retire: bool = True,
    on_eval: Callable[[int, SplitScores], None] | None = None,
) -> TrainResult:
    """Train every member for the longest budget; stop early once each member with a ``stop_at`` has reached it.

    With ``retire``, members that have reached their ``stop_at`` leave the ensemble once they are an eighth of it (or
    one member, for small ensembles), so the members still training no longer pay for them; a retired member's
    metrics stay at their last values. ``on_eval`` sees the evaluation of the members still training. SIGINT and
    SIGTERM finish the step, save a checkpoint and raise ``Interrupted``.
    """
    budget = max(c.steps for c in ens.configs)
    stop_levels = [c.stop_at or 2.0 for c in ens.configs]  # 2.0: never stops early
    snapshot_steps = snapshot_steps or set()
    E = ens.E
    prog = Milestones([None] * E, [None] * E, [None] * E, [0.0] * E)
    active = list(range(E))  # row of the ensemble -> member
    last = {k: [0.0] * E for k in EVAL_KEYS}  # each member's latest evaluation (kept once it retires)
    member_steps = [0] * E
    start, wall = 0, 0.0
    if resume and run is not None:
        if run.has_checkpoint():
            tensors, meta = load_tensors(run.checkpoint_path)
            start, wall = _restore(ens, tensors, meta, run, budget)
            active, last, member_steps = meta["active"], meta["last"], meta["member_steps"]
            prog = Milestones(**meta["progress"])
        run.rewind_metrics(start)  # no checkpoint: start over, with nothing logged twice
    if start > 0 and finished(start, budget, last, active, stop_levels):
        final = SplitScores(**{k: torch.tensor(v) for k, v in last.items()})
        return TrainResult(prog, final, start, wall, 0.0, 0.0, 0.0, member_steps, finished_before=True)

    # named by its folder, as the core loop's: a sweep's groups (group-000, ...) train one after another
    bar = Progress(budget, f"train {run.path.name}" if run is not None else "train", initial=start, enabled=progress,
                   log=run.log_path if run is not None else None)
    t0 = time.perf_counter() - wall
    last_save, saved_step = time.perf_counter(), start
    capture_s = eval_s = save_s = 0.0
    step = start

    def checkpoint(step: int, force: bool = False) -> None:
        nonlocal last_save, saved_step, save_s
        now = time.perf_counter()
        due = (force or stop.requested or now - last_save > checkpoint_every_s
               or (checkpoint_every and step - saved_step >= checkpoint_every))
        if run is not None and due and step > saved_step:
            save_tensors(run.checkpoint_path, {**ens.state_tensors(), **rng_tensors()},
                         {"step": step, "wall_s": now - t0, "progress": asdict(prog), "active": active, "last": last,
                          "member_steps": member_steps})
            last_save, saved_step = time.perf_counter(), step
            save_s += last_save - now
        if stop.requested:
            raise Interrupted(f"stopped at step {step:,}" + (" with a checkpoint" if run is not None else ""),
                              signum=stop.signum)

    with StopRequests() as stop, bar:
        for target in [s for s in eval_steps(budget, eval_ratio) if s > start]:
            # Snapshots between evaluations split the stretch so they land exactly on their step.
            stops = sorted({s for s in snapshot_steps if step < s < target} | {target})
            for stop_step in stops:
                while step < stop_step:
                    if use_cuda_graph and ens.capturable and step >= 1:
                        c0 = time.perf_counter()
                        try:
                            step += ens.capture(warmup=min(3, stop_step - step))
                        except RuntimeError as e:  # an exotic setting the graph cannot hold: carry on eagerly
                            warnings.warn(f"CUDA graph capture failed, continuing eagerly: {e}")
                            use_cuda_graph = False
                        capture_s += time.perf_counter() - c0
                        continue
                    ens.step()
                    step += 1
                    # Between evaluations and snapshots (which save after their own work), every 64 steps: a clock
                    # read per step would cost more than it tells.
                    if (step % 64 == 0 or stop.requested) and step < stop_step:
                        bar.update(step - bar.n)
                        checkpoint(step)
                if stop_step in snapshot_steps and run is not None:
                    for row, m in enumerate(active):
                        name = f"step-{stop_step:07d}" + (f"-m{m}" if E > 1 else "")
                        save_tensors(run.path / "checkpoints" / f"{name}.safetensors",
                                     {f"model.{k}": v for k, v in ens.member_state_dict(row).items()}, {"step": stop_step})
            if ens.device.type == "cuda":
                torch.cuda.synchronize(ens.device)  # the steps queued so far are not the evaluation's time
            e0 = time.perf_counter()
            scores = ens.evaluate()
            values = {k: getattr(scores, k).tolist() for k in EVAL_KEYS}  # one sync
            now = time.perf_counter()
            wall, eval_s = now - t0, eval_s + now - e0
            for row, m in enumerate(active):
                for k in EVAL_KEYS:
                    last[k][m] = values[k][row]
                member_steps[m] = step
                if prog.steps_to_train_99[m] is None and values["train_acc"][row] >= 0.99:
                    prog.steps_to_train_99[m] = step
                if prog.steps_to_val_99[m] is None and values["val_acc"][row] >= 0.99:
                    prog.steps_to_val_99[m], prog.wall_s_to_val_99[m] = step, round(wall, 4)
                prog.best_val_acc[m] = max(prog.best_val_acc[m], values["val_acc"][row])
            bar.update(step - bar.n, train_acc=sum(values["train_acc"]) / len(active),
                       val_acc=sum(values["val_acc"]) / len(active))
            if run is not None:
                run.log({"step": step, "wall_s": round(wall, 4), **{k: v[0] if E == 1 else list(v) for k, v in last.items()}})
            if on_eval is not None:
                on_eval(step, scores)
            going = [row for row, m in enumerate(active) if values["val_acc"][row] < stop_levels[m]]
            done = step >= budget or not going
            # Retire in batches of an eighth of the ensemble: each change of shape costs a new CUDA graph capture.
            if retire and not done and len(active) - len(going) >= max(1, len(active) // 8):
                ens.keep(going)
                active = [active[row] for row in going]
            checkpoint(step, force=done or saved_step == 0)  # the first evaluation's checkpoint makes a kill cheap
            if done:
                break
    final = SplitScores(**{k: torch.tensor(v) for k, v in last.items()})
    return TrainResult(prog, final, step, wall, capture_s, eval_s, save_s, member_steps)


def finished(step: int, budget: int, last: dict, active: list[int], stop_levels: list[float]) -> bool:
    """Whether a run is over: its budget spent, or every member still training at its ``stop_at``."""
    return step >= budget or not any(last["val_acc"][m] < stop_levels[m] for m in active)


def saved_progress(run: Run, configs: list) -> tuple[int, bool]:
    """(steps taken, finished) according to the run's checkpoint; (0, False) without one."""
    if not run.has_checkpoint():
        return 0, False
    _, meta = load_tensors(run.checkpoint_path)
    step, last, active = _loop_state(meta, run, len(configs))
    return step, step > 0 and finished(step, max(c.steps for c in configs), last, active,
                                       [c.stop_at or 2.0 for c in configs])


def _loop_state(meta: dict, run: Run, members: int) -> tuple[int, dict, list[int]]:
    """(step, last evaluation, active members) of a checkpoint's header, checked against the run's ``members``."""
    try:
        per_member = [*asdict(Milestones(**meta["progress"])).values(), meta["member_steps"],
                      *(meta["last"][k] for k in EVAL_KEYS)]
        step, active, _ = int(meta["step"]), list(meta["active"]), float(meta["wall_s"])
        if any(len(v) != members for v in per_member) or not set(active) <= set(range(members)) or step < 0:
            raise ValueError
        return step, {k: list(meta["last"][k]) for k in EVAL_KEYS}, active
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run.checkpoint_path} is damaged (its header does not hold this run's loop state); delete "
                        f"it to start the run over") from None


def _restore(ens: Ensemble, tensors: dict, meta: dict, run: Run, budget: int) -> tuple[int, float]:
    """Load a checkpoint into ``ens``; returns (step, wall seconds)."""
    start, _, active = _loop_state(meta, run, len(ens.configs))
    wall = float(meta["wall_s"])
    if start > budget:
        raise UserError(f"--steps {budget:,} is fewer than the {start:,} steps {run.path} has taken")
    if len(active) < ens.E:
        ens.keep(active)
    ens.load_state_tensors(tensors, str(run.checkpoint_path))
    restore_rng(tensors)
    return start, wall
