"""The run folder every training or generating command writes (its files are written by ``nexttoken.files``).

    RUN/config.json           everything needed to rebuild the model and continue the run
    RUN/metrics.jsonl         one JSON object per evaluation
    RUN/checkpoint.safetensors  the latest full training state (weights, optimizer, RNG; metadata in the header)
    RUN/checkpoints/          optional weight snapshots kept for analysis (step-0001000.safetensors, ...)
    RUN/summary.json          the headline numbers of the run
    RUN/log.txt               progress lines of long work (also printed when stderr is not a terminal)
    RUN/*.png, samples        plots and samples written by the domain

Every file is written to a unique temporary name in the same folder and then renamed, so a killed run never leaves a
corrupt file behind; ``Run.resume`` + ``load_checkpoint`` continue a killed run from its last checkpoint. A folder is
claimed by one process at a time (a lock the kernel releases when the process dies), and a damaged file is one clear
error that names it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from nexttoken.errors import UserError
from nexttoken.files import (UMASK, atomic_write_json, atomic_write_text, jsonable, load_meta, load_tensors,
                             optimizer_from_tensors, optimizer_to_tensors, parse_lines, read_json, restore_rng,
                             rng_tensors, save_tensors)

CHECKPOINT = "checkpoint.safetensors"


# ---- the run folder -------------------------------------------------------------------------------------------------
def default_run_dir(domain: str, verb: str, root: str | Path = "runs") -> Path:
    """runs/<domain>-<verb>-<time>, with -2, -3... when a folder of that second exists (the claim settles races)."""
    stem = Path(root) / f"{domain}-{verb}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def unique_dir(parent: str | Path, stem: str) -> Path:
    """Create and return a new folder ``parent/stem``, or ``stem-2``, ``stem-3``...: two commands started in the same
    second never share one (the exclusive mkdir decides)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"{parent} holds too many folders named {stem}-N")


def _claim(path: Path):
    """An exclusive lock on ``path/.lock`` held while the process runs; the kernel drops it when the process dies, so
    a killed run can be resumed and two live processes never write the same folder."""
    import fcntl

    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{path} is in use by another running nexttoken command") from None
    # Holding the lock, no other process writes here: a temporary file of an atomic write is what a killed process
    # left half-written, and nothing would ever remove it (a checkpoint's is the size of the model).
    for stale in [*path.glob(".*.tmp"), *path.glob("checkpoints/.*.tmp")]:
        stale.unlink(missing_ok=True)
    return fd


def _writable_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path} is not writable; choose another --out")


def _a(word: str) -> str:
    """The word with its indefinite article: 'a grok.train', 'an instruct.sft'."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def wrong_kind(path: str | Path, found: str | None, kinds, what: str = "") -> UserError:
    """The line for a folder written by another command; ``what`` names what was expected when that is more than
    runs of ``kinds`` (a model of several origins, say).

    >>> print(wrong_kind("r", "instruct.sft", ("instruct.ppo", "grok.train")))
    r is an instruct.sft run, not an instruct.ppo or a grok.train run
    >>> print(wrong_kind("r", "jukebox.vqvae", (), what="a policy"))
    r is a jukebox.vqvae run, not a policy
    """
    expected = what or f"{' or '.join(map(_a, kinds))} run"
    return UserError(f"{path} is {_a(found) if found else 'an unnamed'} run, not {expected}")


def read_config(path: str | Path) -> dict | None:
    """PATH/config.json, or None where there is none (a folder that is no run of ours); one that is not a JSON object
    is damaged."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    saved = read_json(config)
    if not isinstance(saved, dict):
        raise UserError(f"{config} is damaged (not a JSON object)")
    return saved


def run_kind(path: str | Path) -> str | None:
    """The kind saved in PATH/config.json ("instruct.sft", ...): "" when it names none, None when there is none."""
    config = read_config(path)
    if config is None:
        return None
    return config["kind"] if isinstance(config.get("kind"), str) else ""


class Run:
    """A run folder. ``Run.create`` claims a new one, ``Run.resume`` reclaims a run to continue it, ``Run.open`` reads
    one (to analyse, evaluate or sample from it).

    Used as a context manager, a run that fails before it has logged anything or saved a checkpoint removes what it
    wrote, so the corrected command can use the same folder, and a resume that fails before its next checkpoint puts
    back the plan ``amend`` changed (a Ctrl-C keeps it: the command it prints continues the new plan). ``kind`` (e.g.
    "grok.train") is saved in config.json and checked on resume, so a folder of another command is refused by name.
    ``enabled=False`` (non-zero DDP ranks) turns every write into a no-op so only one process touches the folder.
    """

    def __init__(self, path: str | Path, config: dict, enabled: bool = True, lock: int | None = None,
                 created: bool = False, fresh: bool = False) -> None:
        self.path = Path(path)
        self.config = config
        self.enabled = enabled
        self._lock = lock
        self._created = created  # this process made the folder (not only its files)
        self._fresh = fresh  # this process wrote config.json: a failed start may take it back
        self._before_amend: tuple[dict, int] | None = None  # the plan and checkpoint step a failed resume restores

    @classmethod
    def create(cls, path: str | Path, config: dict, kind: str = "", enabled: bool = True) -> "Run":
        path = Path(path)
        if not enabled:
            return cls(path, config, enabled)
        made = not path.exists()
        _writable_dir(path)
        lock = _claim(path)
        if (path / "config.json").exists():
            os.close(lock)
            raise UserError(f"{path} already holds a run; pass --resume {path} to continue it or choose another --out")
        others = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))  # .lock, .DS_Store...
        if others:  # the user's own files (audio to train on, say) are no place for a run's
            os.close(lock)
            (path / ".lock").unlink(missing_ok=True)
            raise UserError(f"{path} holds other files ({others[0]}{', ...' if len(others) > 1 else ''}); a new run "
                            f"starts in a new or empty folder: choose another --out")
        config = {"kind": kind, **config} if kind else config
        atomic_write_json(path / "config.json", config)
        atomic_write_text(path / "metrics.jsonl", "")
        return cls(path, config, enabled, lock, made, fresh=True)

    @classmethod
    def open(cls, path: str | Path, kind: str | tuple[str, ...] = (), enabled: bool = True) -> "Run":
        """A run folder for reading; ``kind`` names the commands whose runs are accepted."""
        path = Path(path)
        config = read_config(path)
        if config is None:
            raise UserError(f"{path} is not a run folder (no config.json)")
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds and config.get("kind") not in kinds:
            raise wrong_kind(path, config.get("kind"), kinds)
        return cls(path, config, enabled)

    @classmethod
    def resume(cls, path: str | Path, kind: str | tuple[str, ...] = (), enabled: bool = True) -> "Run":
        """Claim an existing run to continue training it."""
        run = cls.open(path, kind, enabled)
        if enabled:
            run._lock = _claim(run.path)
        return run

    def amend(self, sections: dict, plan: bool = True) -> None:
        """Save what a resume changed (more steps, a time budget) in config.json, so that the next resume, the
        summary and whoever reads the folder see the run's plan as it now stands. A ``plan`` change is taken back if
        the resume fails before its next checkpoint; a fact (where the run's inputs now are) stays."""
        updated = {**self.config, **sections}
        if updated != self.config and self.enabled:
            if plan and self._before_amend is None:
                self._before_amend = (self.config, self.trained_steps())
            atomic_write_json(self.path / "config.json", updated)
        self.config = updated

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.enabled and self._fresh and not self.started():
                self.discard()
            elif exc_type is not None and not issubclass(exc_type, KeyboardInterrupt) and self._before_amend:
                before, step = self._before_amend
                if self.trained_steps() == step:  # a resume refused before it trained leaves the plan it found
                    atomic_write_json(self.path / "config.json", before)
                    self.config = before
        finally:
            self.close()

    def started(self) -> bool:
        """Anything worth keeping: a checkpoint or a logged record."""
        return self.has_checkpoint() or bool(self.metrics())

    def discard(self) -> None:
        """Remove what a failed start wrote (and the folder, if this run made it)."""
        for name in ("config.json", "metrics.jsonl", "log.txt", ".lock"):
            (self.path / name).unlink(missing_ok=True)
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # metrics
    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=jsonable) + "\n")

    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def rewind_metrics(self, step: int) -> None:
        """Drop records logged after ``step``: a resumed run logs them again."""
        if self.enabled:
            kept = [r for r in self.metrics() if r.get("step", 0) <= step]
            atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    @property
    def log_path(self) -> Path | None:
        """RUN/log.txt, where long work writes its progress lines (None for ranks that write nothing)."""
        return self.path / "log.txt" if self.enabled else None

    # checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def trained_steps(self) -> int:
        """The steps (or a loop's own unit) its checkpoint has trained; 0 without one."""
        return int(load_meta(self.checkpoint_path).get("step", 0))

    def save_checkpoint(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        step: int,
        extra_meta: dict | None = None,
        snapshot: bool = False,
    ) -> None:
        """Write the full training state; ``snapshot`` also keeps this step's weights under checkpoints/."""
        if not self.enabled:
            return
        tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
        meta: dict = {"step": step, **(extra_meta or {})}
        if optimizer is not None:
            opt_tensors, meta["optimizer"] = optimizer_to_tensors(optimizer)
            tensors.update(opt_tensors)
        tensors.update(rng_tensors())
        save_tensors(self.checkpoint_path, tensors, meta)
        if snapshot:
            weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
            save_tensors(self.path / "checkpoints" / f"step-{step:07d}.safetensors", weights, {"step": step})

    def load_checkpoint(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng_state: bool = True
    ) -> tuple[int, dict[str, torch.Tensor], dict]:
        """Load the latest state into ``model`` (and ``optimizer``); returns (step, all tensors, meta)."""
        tensors, meta = load_tensors(self.checkpoint_path)
        try:
            load_weights(model, tensors)
            if optimizer is not None and "optimizer" in meta:
                optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"{self.checkpoint_path} does not fit this model ({str(e).splitlines()[0]}); "
                            f"it was written by another configuration") from None
        step = meta.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UserError(f"{self.checkpoint_path} is damaged (its step is {step!r})")
        if restore_rng_state:
            restore_rng(tensors)
        return step, tensors, meta

    def snapshots(self) -> list[tuple[int, Path]]:
        return sorted((int(p.stem.split("-")[1]), p) for p in (self.path / "checkpoints").glob("step-*.safetensors"))

    # summary
    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            atomic_write_json(self.path / "summary.json", summary)


def read_metrics(path: str | Path) -> list[dict]:
    """Records of RUN/metrics.jsonl; a half-written last line (a killed process) is skipped. Any other line that is
    not a record is refused: the file was damaged, and a resume, which rewrites it, would drop that line unseen."""
    f = Path(path) / "metrics.jsonl"
    if not f.exists():
        return []
    return [r for _, r in parse_lines(f, f.read_text(errors="replace").splitlines(), _metrics_record,
                                      "a metrics record")]


def _metrics_record(line: str) -> dict:
    """One line of metrics.jsonl: a JSON object whose step, if it has one, is a whole number (resume compares them)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
        raise ValueError("the file is damaged")
    return record


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    unwrap(model).load_state_dict(weights)
