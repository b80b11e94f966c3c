"""What every instruct stage shares: a run folder made with its configs saved in it, or resumed with them.

A stage (pretrain, sft, rank, reward, ppo, dpo, evaluate) is a function of its config dataclasses, a ``Run`` and a
device. ``open_stage`` makes the folder, or reclaims a killed one with the configs it was started with; a flag given
on resume must agree with them, except the ``adjustable`` ones.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from nexttoken.config import load, resumed
from nexttoken.files import read_json
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, nothing_to_train


def kind_of(stage: str) -> str:
    """The run kind of a stage.

    >>> kind_of("ppo")
    'instruct.ppo'
    """
    return f"instruct.{stage}"


def open_stage(path: str | Path, stage: str, configs: dict, resume: bool, given: dict[str, dict] | None = None,
               adjustable: tuple[str, ...] = (), enabled: bool = True) -> tuple[Run, dict]:
    """(run, configs): a new run folder holding ``configs`` ({name: dataclass}) in its config.json, or, with
    ``resume``, the killed run at ``path`` and the configs saved in it (a folder of another stage is refused).
    ``enabled=False`` (the other processes of a torchrun) writes nothing."""
    if not resume:
        return Run.create(path, {name: asdict(cfg) for name, cfg in configs.items()}, kind=kind_of(stage),
                          enabled=enabled), configs
    run = Run.resume(path, kind=kind_of(stage), enabled=enabled)
    try:
        saved = {name: load(type(cfg), run.config.get(name, {}), f"{Path(path) / 'config.json'}: {name}")
                 for name, cfg in configs.items()}
        if given:
            trained = run.trained_steps()
            saved = {name: resumed(cfg, given.get(name, {}), adjustable, trained) for name, cfg in saved.items()}
            run.amend({name: asdict(cfg) for name, cfg in saved.items()})
    except BaseException:
        run.close()  # refused: the folder is free again, as it was
        raise
    return run, saved


def finished(path: str | Path) -> bool:
    """A stage's folder that holds its summary: the stage ran to its end."""
    return (Path(path) / "summary.json").is_file()


def kept_summary(run: Run, resume: bool, loop: LoopConfig | int, unit: str = "steps") -> dict | None:
    """The summary of a resumed stage that has already trained all the ``loop`` asks for (a LoopConfig, or a count of
    ``unit``), left as it is: written again, it would time a stretch that trained nothing. None: there is training to
    do."""
    if resume and nothing_to_train(run.path, loop, unit):
        return read_json(run.path / "summary.json") if run.enabled else {}  # as the other processes' stages do
    return None
