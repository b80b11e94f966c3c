"""The pipeline folder: every stage of one Jukebox in one folder, so that one RUN names what ``encode``, ``decode``,
``sample``, ``evaluate`` and ``report`` need, and a killed ``train`` continues where it stopped.

    RUN/config.json          kind jukebox.pipeline: the data (and the plan of ``nexttoken jukebox train``)
    RUN/vqvae/               the VQ-VAE's run: config, metrics.jsonl, checkpoint, summary.json, plots
    RUN/codes.safetensors    every track's codes at every level, encoded once after the VQ-VAE (``codes.py``)
    RUN/top/, RUN/middle/, RUN/bottom/    each prior's run, trained on those codes alone
    RUN/samples/<name>/      sampled audio (``sample.py``)         RUN/evaluation.json   ``evaluate``

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341: the VQ-VAE is trained first and frozen; the priors learn its
codes. Every stage is a ``nexttoken.runs.Run`` of its own kind, so a folder of another kind is refused by name.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from nexttoken.config import load, option, resumed
from nexttoken.distributed import Dist, barrier, init_distributed, main_first
from nexttoken.errors import UserError
from nexttoken.jukebox.codes import CodeSet, encode_clips
from nexttoken.jukebox.data import MUSIC21, DataConfig, load_data, resolved
from nexttoken.jukebox.prior import LEVELS, Prior, PriorConfig
from nexttoken.jukebox.train import PRIOR_KIND, RECIPES, VQVAE_KIND, Recipe, VQVAEOptions, train_prior, train_vqvae
from nexttoken.jukebox.vqvae import VQVAE, VQVAEConfig
from nexttoken.files import read_json
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, seed_everything

KIND = "jukebox.pipeline"
CODES = "codes.safetensors"


def _steps(loop: str) -> str:
    """Each preset's steps of a stage, for the help: 'cpu 200, gpu 100,000 within 30 minutes, tiny 20'."""
    def one(cfg: LoopConfig) -> str:
        return f"{cfg.steps:,}" + (f" within {cfg.max_seconds / 60:g} minutes" if cfg.max_seconds else "")

    return ", ".join(f"{name} {one(getattr(recipe, loop))}" for name, recipe in RECIPES.items())


@dataclass
class Plan:
    """What ``nexttoken jukebox train`` runs: every stage as its preset says (``train.RECIPES``), with these
    changes."""

    vqvae_steps: int | None = option(None, f"VQ-VAE steps (default: the preset's; {_steps('vq_loop')})", ge=1,
                                     le=10**9)
    prior_steps: int | None = option(None, f"steps of each prior (default: the preset's; {_steps('prior_loop')})",
                                     ge=1, le=10**9)

    def vq_loop(self, recipe: Recipe) -> LoopConfig:
        return replace(recipe.vq_loop, steps=self.vqvae_steps or recipe.vq_loop.steps)

    def prior_loop(self, recipe: Recipe) -> LoopConfig:
        return replace(recipe.prior_loop, steps=self.prior_steps or recipe.prior_loop.steps)


# ---- the folder ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def claimed(path: Path, config: dict, new: bool, dist: Dist):
    """The pipeline folder claimed for this command: made (``new``) or reclaimed, by rank 0 alone under torchrun. A
    new folder in which no stage started is removed again if the command fails, so the corrected command can use it.
    Every process leaves only when all are done, so none reads a stage's files before rank 0 has written them."""
    enabled = dist.is_main
    run = Run.create(path, config, KIND, enabled) if new else Run.resume(path, KIND, enabled)
    try:
        yield run
    except BaseException:
        if new and enabled and not any((path / s / "config.json").is_file() for s in ("vqvae", *LEVELS)):
            run.discard()
        raise
    finally:
        run.close()
    barrier(dist)


def open_pipeline(path: Path) -> Run:
    """A pipeline folder to read; any other folder is refused by name."""
    return Run.open(path, KIND)


def data_config(run: Run) -> DataConfig:
    cfg = load(DataConfig, run.config.get("data"), str(run.path / "config.json"))
    audio = Path(cfg.audio).expanduser()
    if cfg.audio not in MUSIC21 and not audio.is_absolute() and not audio.exists():
        # a path saved as typed names the audio only from the folder `train` ran in
        raise UserError(f"{run.path}: its audio {cfg.audio} was given relative to the folder `train` ran in, and "
                        f"{Path.cwd()} holds no {cfg.audio}; run this from that folder")
    return cfg


def recipe_of(path: Path) -> Recipe:
    """The recipe of the preset a pipeline's VQ-VAE was trained with: what its priors train at by default."""
    open_pipeline(path)
    if not (path / "vqvae" / "config.json").is_file():
        vqvae_config(path)  # says how to train the VQ-VAE first
    return RECIPES[saved_vqvae_settings(path, {})[0].preset]


def vqvae_config(path: Path) -> VQVAEConfig:
    stage = Run.open(path / "vqvae", VQVAE_KIND) if (path / "vqvae").is_dir() else None
    if stage is None:
        raise UserError(f"{path} has no VQ-VAE yet; train it with: nexttoken jukebox train-vqvae --resume {path}")
    try:
        return VQVAEConfig(**stage.config["vqvae"])
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{path / 'vqvae' / 'config.json'} is damaged ({e})") from None


def load_vqvae(path: Path, device: torch.device) -> VQVAE:
    """The trained VQ-VAE of a pipeline folder, in eval mode on ``device``."""
    model = VQVAE(vqvae_config(path))
    stage = Run.open(path / "vqvae", VQVAE_KIND)
    if not stage.has_checkpoint():
        raise UserError(f"{path / 'vqvae'} has no checkpoint yet; continue it with: nexttoken jukebox train-vqvae "
                        f"--resume {path}")
    stage.load_checkpoint(model, restore_rng_state=False)
    return model.to(device).eval()


def clips_of(path: Path):
    """The pipeline's clips, at its VQ-VAE's rate and clip length."""
    vq = vqvae_config(path)
    return load_data(data_config(open_pipeline(path)), vq.sample_rate, vq.clip_samples)


def codes_of(path: Path, device: torch.device) -> CodeSet:
    """The cached codes of the pipeline, encoded now (once) if the VQ-VAE has moved on since, or never encoded."""
    step = vqvae_step(path)
    if (path / CODES).is_file():
        codes = CodeSet.load(path / CODES)
        if codes.step == step:
            return codes
    print(f"nexttoken: encoding the audio once with the VQ-VAE of step {step} into {path / CODES}", file=sys.stderr)
    clips = clips_of(path)
    vqvae = load_vqvae(path, device)
    codes = encode_clips(vqvae, clips, step, log=open_pipeline(path).log_path)
    del vqvae  # the priors train on the codes alone
    codes.save(path / CODES)
    return codes


def vqvae_step(path: Path) -> int:
    summary = path / "vqvae" / "summary.json"
    if not summary.is_file():
        raise UserError(f"{path / 'vqvae'} has not finished training; finish it first with: nexttoken jukebox "
                        f"train-vqvae --resume {path}")
    return int(read_json(summary)["steps"])


def prior_config(codes: CodeSet, level: str, base: PriorConfig) -> PriorConfig:
    """``base`` with what the codes decide: vocabulary, labels, hops and the range of the timing embedding."""
    i = codes.level(level)
    longest = max([t["seconds"] for t in codes.tracks] + [1.0])
    ratio = 1 if i == len(codes.levels) - 1 else codes.hops[i + 1] // codes.hops[i]
    return replace(base, level=level, codebook_size=codes.codebook_size, artists=list(codes.artists),
                   genres=list(codes.genres), ratio=ratio, hop=codes.hops[i], sample_rate=codes.sample_rate,
                   max_seconds=float(longest)).validate()


def open_prior_config(path: Path, level: str) -> PriorConfig:
    """The settings of a trained prior of a pipeline folder (its model is not built)."""
    stage = path / level
    if not (stage / "config.json").is_file():
        raise UserError(f"{path} has no {level} prior yet; train it with: nexttoken jukebox train-prior {path} "
                        f"--level {level}")
    source = str(stage / "config.json")
    cfg = load(PriorConfig, Run.open(stage, PRIOR_KIND).config.get("prior"), source)
    try:  # the settings that depend on each other, as the flags are checked: a hand-edited file is one clear line
        return cfg.validate()
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def load_prior(path: Path, level: str, device: torch.device) -> Prior:
    """A trained prior of a pipeline folder, in eval mode on ``device``."""
    cfg = open_prior_config(path, level)
    run = Run.open(path / level, PRIOR_KIND)
    check_codes_step(path, level)
    if not run.has_checkpoint():
        raise UserError(f"{run.path} has no checkpoint yet; continue it with: nexttoken jukebox train-prior {path} "
                        f"--level {level} --resume")
    model = Prior(cfg)
    run.load_checkpoint(model, restore_rng_state=False)
    return model.to(device).eval()


def stale_priors(path: Path, levels) -> list[Path]:
    """The started priors among ``levels`` that learned the codes of an earlier VQ-VAE: its codes no longer mean what
    they meant to them, so they can neither sample nor train on (the new codes would mix with the old)."""
    now, started = vqvae_step(path), [lv for lv in levels if (path / lv / "config.json").is_file()]
    return [path / lv for lv in started if Run.open(path / lv, PRIOR_KIND).config.get("codes_step") != now]


def check_codes_step(path: Path, level: str) -> None:
    if stale_priors(path, [level]):
        raise UserError(f"the {level} prior learned the codes of the VQ-VAE before it trained on to step "
                        f"{vqvae_step(path)}; delete {path / level} and train it again")


def finished(stage: Path) -> bool:
    return (stage / "summary.json").is_file()


# ---- the stages ------------------------------------------------------------------------------------------------------
def vqvae_stage(path: Path, opts: VQVAEOptions, optim: OptimConfig, loop: LoopConfig, device: str,
                data: DataConfig | None = None, plan: Plan | None = None) -> Path:
    """Train the VQ-VAE of a new pipeline folder (``data`` given: everything is checked and the audio read before the
    folder is made), or continue that of an existing one with ``opts``, ``optim`` and ``loop`` as saved."""
    dist = init_distributed(device)
    loop.validate(dist.world_size)
    seed_everything(loop.seed)
    stage = path / "vqvae"
    if data is not None:
        vq = opts.vqvae_config()
        data = resolved(data)
        with main_first(dist):  # rank 0 renders or reads the audio into the cache, the others read the cache
            clips = load_data(data, vq.sample_rate, vq.clip_samples)
        config = {"data": asdict(data), "options": asdict(opts), **({"plan": asdict(plan)} if plan else {})}
        with claimed(path, config, new=True, dist=dist):
            train_vqvae(stage, clips, opts, optim, loop, dist, resume=False)
        return path
    data = data_config(open_pipeline(path))
    vq = opts.vqvae_config()
    started = (stage / "config.json").is_file()  # looked at by every process before rank 0 can write it
    with main_first(dist):
        clips = load_data(data, vq.sample_rate, vq.clip_samples)
    with claimed(path, {}, new=False, dist=dist):
        train_vqvae(stage, clips, opts, optim, loop, dist, resume=started)
    return path


def saved_vqvae_settings(path: Path, changes: dict) -> tuple[VQVAEOptions, OptimConfig, LoopConfig]:
    """A VQ-VAE stage's settings, with the ``changes`` a resume may make (more steps)."""
    run = Run.open(path / "vqvae", VQVAE_KIND)
    source = str(run.path / "config.json")
    opts = load(VQVAEOptions, run.config.get("options"), source)
    optim, loop = load(OptimConfig, run.config.get("optim"), source), load(LoopConfig, run.config.get("loop"), source)
    return (resumed(opts, _pick(changes, VQVAEOptions)), resumed(optim, _pick(changes, OptimConfig)),
            resumed(loop, _pick(changes, LoopConfig), ("steps", "max_seconds"), run.trained_steps()))


def saved_prior_settings(path: Path, level: str, changes: dict) -> tuple[PriorConfig, OptimConfig, LoopConfig]:
    run = Run.open(path / level, PRIOR_KIND)
    source = str(run.path / "config.json")
    cfg = load(PriorConfig, run.config.get("prior"), source)
    optim, loop = load(OptimConfig, run.config.get("optim"), source), load(LoopConfig, run.config.get("loop"), source)
    return (resumed(cfg, _pick(changes, PriorConfig)), resumed(optim, _pick(changes, OptimConfig)),
            resumed(loop, _pick(changes, LoopConfig), ("steps", "max_seconds"), run.trained_steps()))


def _pick(changes: dict, cls) -> dict:
    return {k: v for k, v in changes.items() if k in cls.__dataclass_fields__}


def prior_stage(path: Path, level: str, base: PriorConfig, optim: OptimConfig, loop: LoopConfig, device: str,
                resume: bool) -> Path:
    """Train one level's prior in ``path/level`` on the pipeline's codes (encoded first if they are not cached)."""
    open_pipeline(path)
    vq = vqvae_config(path)
    if level not in vq.levels:
        raise UserError(f"--level {level}: this VQ-VAE's levels are {', '.join(vq.levels)}")
    i = vq.levels.index(level)
    stage = path / level
    exists = (stage / "config.json").is_file()
    if not resume:  # the settings are checked before anything is encoded or written
        replace(base, level=level, ratio=vq.hops[i + 1] // vq.hops[i] if i + 1 < len(vq.hops) else 1).validate()
    if exists and not resume:
        raise UserError(f"{stage} already holds a prior; pass --resume to continue it, or delete the folder")
    if resume and not exists:
        raise UserError(f"{stage} holds no prior to resume; leave out --resume to start it")
    if resume:
        check_codes_step(path, level)
    dist = init_distributed(device)
    loop.validate(dist.world_size)
    seed_everything(loop.seed)
    with claimed(path, {}, new=False, dist=dist):
        with main_first(dist):  # rank 0 encodes the codes once, the others read them
            codes = codes_of(path, dist.device)
        cfg = base if resume else prior_config(codes, level, base)
        train_prior(stage, codes, cfg, optim, loop, dist, resume)
    return stage


def train_everything(path: Path, plan: Plan, opts: VQVAEOptions, device: str, data: DataConfig | None) -> Path:
    """Every stage into one folder: the VQ-VAE, the codes, then the top, middle and bottom priors. With ``data``
    the folder is new; without, a finished stage is kept, a started one continues and the others start, as the plan
    saved in the folder says."""
    if data is not None:
        recipe = RECIPES[opts.preset]
        vqvae_stage(path, opts, recipe.vq_optim, plan.vq_loop(recipe), device, data, plan)
    else:
        saved, source = open_pipeline(path).config, str(path / "config.json")
        plan = load(Plan, saved.get("plan") or {}, source)
        if (path / "vqvae" / "config.json").is_file():
            opts, optim, loop = saved_vqvae_settings(path, {})
        else:  # killed before the VQ-VAE's folder was made
            opts = load(VQVAEOptions, saved.get("options") or {}, source)
            optim, loop = RECIPES[opts.preset].vq_optim, plan.vq_loop(RECIPES[opts.preset])
        if not finished(path / "vqvae"):
            vqvae_stage(path, opts, optim, loop, device)
    recipe = recipe_of(path)
    levels = list(reversed(vqvae_config(path).levels))
    stale = stale_priors(path, levels)
    if stale:
        raise UserError(f"{', '.join(map(str, stale))}: learned the codes of the VQ-VAE before it trained on to step "
                        f"{vqvae_step(path)}; delete {'them' if len(stale) > 1 else 'it'} and resume again to train "
                        "on the new codes")
    for level in levels:
        stage = path / level
        if finished(stage):
            continue
        if (stage / "config.json").is_file():
            cfg, optim, loop = saved_prior_settings(path, level, {})
            prior_stage(path, level, cfg, optim, loop, device, resume=True)
        else:
            prior_stage(path, level, recipe.priors[level], recipe.prior_optim, plan.prior_loop(recipe), device,
                        resume=False)
    return path


# ---- encode and decode files -----------------------------------------------------------------------------------------
def written_as(out: Path | None, suffix: str) -> Path | None:
    """``-o`` checked against the kind of file the command writes, so that it can never name the file it reads (an
    audio file for encode, a codes file for decode) nor write one kind under another's name."""
    if out is not None and out.suffix.lower() != suffix:
        raise UserError(f"-o {out}: this writes a {suffix} file; give a name ending in {suffix}")
    return out


def encode_file(path: Path, audio_path: Path, out: Path | None, device: torch.device) -> tuple[Path, list[str]]:
    """An audio file's codes at every level into a .npz (``codes.write_npz``), and a line per level."""
    from nexttoken.jukebox.audio import read_audio
    from nexttoken.jukebox.codes import write_npz

    out = written_as(out, ".npz")
    open_pipeline(path)
    vq = vqvae_config(path)
    audio = torch.from_numpy(read_audio(audio_path, vq.sample_rate))[None]  # (1, samples)
    vqvae = load_vqvae(path, device)
    codes = [c[0].cpu() for c in vqvae.encode(audio.to(device))]
    out = write_npz(out or audio_path.with_suffix(".npz"), codes, vq.levels, vq.hops, vq.sample_rate, audio.shape[1])
    lines = [f"{name:6s} {len(c):8,d} codes  {vq.sample_rate / hop:7.1f} codes/s  "
             f"{vq.bits_per_second(i) / 1000:6.2f} kbit/s" for i, (name, c, hop) in enumerate(zip(vq.levels, codes,
                                                                                                   vq.hops))]
    return out, lines


def decode_file(path: Path, codes_path: Path, level: str, out: Path | None, device: torch.device
                ) -> tuple[Path, float]:
    """A .npz of codes decoded from one level to a WAV (the first sample of a batch gets the plain name)."""
    from nexttoken.jukebox.audio import write_wav
    from nexttoken.jukebox.codes import read_npz

    out = written_as(out, ".wav")
    open_pipeline(path)
    vq = vqvae_config(path)
    f = read_npz(codes_path)
    if level not in f.codes:
        raise UserError(f"--level {level}: {codes_path} holds the {', '.join(f.codes) or 'no'} level(s)")
    if f.sample_rate != vq.sample_rate or tuple(f.hops) != tuple(vq.hops):
        raise UserError(f"{codes_path} was encoded at {f.sample_rate} Hz with hops {f.hops}; this VQ-VAE codes "
                        f"{vq.sample_rate} Hz with hops {vq.hops}")
    codes = torch.from_numpy(f.codes[level]).long()
    codes = codes[None] if codes.dim() == 1 else codes
    if codes.numel() and (codes.min() < 0 or codes.max() >= vq.codebook_size):
        raise UserError(f"{codes_path}: codes outside this VQ-VAE's codebook of {vq.codebook_size}")
    vqvae = load_vqvae(path, device)
    with torch.no_grad():
        audio = vqvae.decode(codes.to(device), vq.levels.index(level))[:, : f.samples].cpu().numpy()
    out = out or codes_path.with_name(f"{codes_path.stem}-{level}.wav")
    for k, a in enumerate(audio):
        write_wav(out if k == 0 else out.with_name(f"{out.stem}-{k + 1}{out.suffix}"), a, vq.sample_rate)
    return out, audio.shape[1] / vq.sample_rate
