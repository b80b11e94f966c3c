"""Ancestral sampling: top codes from the top prior, then middle and bottom codes from the upsamplers, window by
window with overlap past the context, each level decoded to a WAV and a spectrogram as soon as its codes exist.

    nexttoken jukebox sample RUN --artist bach --genre piano --seconds 4
    nexttoken jukebox sample RUN --artist low_voice --genre song --lyrics "daki mo lesa" --seconds 3
    nexttoken jukebox sample RUN --artist bach --prime in.wav --prime-seconds 2 --seconds 4   # continue a recording
    nexttoken jukebox sample RUN --artist bach --stop-at top      # top codes only; upsample later with --resume DIR
    nexttoken jukebox sample RUN --resume RUN/samples/sample-...  # continue a killed (or stopped) sampling

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 4 and appendix: each window keeps the last codes of
the one before as its prompt, so a piece can be longer than a prior's context; a primed sample starts from a
recording's codes. One model is in memory at a time (a prior, then the VQ-VAE to decode its level), and after every
window the codes so far and the random generator's state are written (an upsampler run in ``--parallel`` stretches
writes its level once whole), so ``--resume`` continues a killed sampling and ends exactly as an uninterrupted one
would. The sample folder is a run of kind ``jukebox.sample``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from nexttoken.config import check, load, option
from nexttoken.errors import UserError
from nexttoken.jukebox.audio import read_audio, write_wav
from nexttoken.jukebox.codes import write_npz
from nexttoken.jukebox.data import known_label
from nexttoken.jukebox.prior import LEVELS, Prior, chars_batch, position_seconds
from nexttoken.progress import Progress
from nexttoken.files import load_tensors, save_tensors
from nexttoken.runs import Run
from nexttoken.sampling import SamplingConfig, generate

KIND = "jukebox.sample"
# The paper sampled slightly below temperature 1 (0.98-0.99) at every level.
JUKEBOX_SAMPLING = SamplingConfig(temperature=0.98)


PRIME_SECONDS = 2.0  # what a prime keeps unless --prime-seconds says


@dataclass
class SampleConfig:
    artist: str = option("", "the artist to sample (default: the run's first)")
    genre: str = option("", "the genre (default: the artist's most common)")
    lyrics: str = option("", "words to sing (a top prior trained with lyrics)")
    seconds: float = option(4.0, "seconds to sample after the prime", gt=0, le=3600)
    prime: str = option("", "a recording whose start the sample continues")
    prime_seconds: float | None = option(None, f"seconds of the recording kept as the prime (default "
                                         f"{PRIME_SECONDS:g}, or all of a shorter one)", gt=0, le=3600)
    total_seconds: float | None = option(None, "length of the piece the sample opens, as the top prior's timing "
                                         "input hears it (default: the median length of the artist's tracks, or "
                                         "what is sampled if longer)", gt=0, le=3600)
    n: int = option(1, "samples drawn together (a batch)", ge=1, le=256)
    stop_at: str = option("bottom", "the last level to sample (upsample the rest later with --resume)",
                          choices=LEVELS)
    overlap: float = option(0.5, "share of each window's codes carried into the next as its prompt", ge=0, lt=1)
    parallel: int = option(1, "upsamplers: stretches of the piece (after a prime) sampled side by side in one batch "
                           "(faster; each starts without the codes before it, so a seam every 1/N of it)", ge=1,
                           le=4096)


@dataclass
class LevelResult:
    level: str
    codes: int  # codes sampled per sample at this level (the prime's not counted)
    seconds: float  # wall-clock seconds spent sampling them
    real_time_factor: float  # seconds of compute per second of audio produced (below 1: faster than real time)
    wavs: list[Path]
    png: Path


def plan_windows(done: int, total: int, context: int, keep: int, align: int) -> list[tuple[int, int, int]]:
    """(first code, codes already known, end) of each window still to sample: a window ends ``context`` codes after
    its first at most, starts ``keep`` codes before the first unknown one (rounded down to ``align``, so an
    upsampler's window starts on a code of the level above), and samples up to its end.

    >>> plan_windows(0, 10, 4, 2, 1)
    [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    """
    keep = min(keep, context - align)  # a window that kept a whole context would add no code: at least ``align``
    out, pos = [], done
    while pos < total:
        start = max(0, (pos - keep) // align * align)
        end = min(start + context, total)
        out.append((start, pos, end))
        pos = end
    return out


def sample_level(prior: Prior, known: torch.Tensor, total: int, conditioning, sampling: SamplingConfig,
                 generator: torch.Generator, keep: int, on_window=None, progress=None,
                 use_cache: bool = True) -> torch.Tensor:
    """Codes (B, total) of one level continuing ``known`` (B, done): window by window through ``generate`` with the
    KV cache (``use_cache=False`` recomputes every step, for the tests). ``conditioning(start, end)`` gives the core
    inputs (cond, x_add, memory...) for codes [start, end); ``on_window(codes)`` is called after each window."""
    cfg, device = prior.cfg, next(prior.parameters()).device
    forbidden = torch.zeros(cfg.codebook_size + 1, dtype=torch.bool)
    forbidden[cfg.start_token] = True  # never a code
    codes = known
    for start, pos, end in plan_windows(known.shape[1], total, cfg.context, keep, cfg.ratio):
        start_token = torch.full((codes.shape[0], 1), cfg.start_token, dtype=torch.long)
        prompt = torch.cat([start_token, codes[:, start:pos]], dim=1)
        out = generate(prior.gpt, prompt.to(device), end - pos, **conditioning(start, end),
                       forbidden=forbidden.to(device), temperature=sampling.temperature, top_k=sampling.top_k or None,
                       top_p=sampling.top_p if sampling.top_p < 1 else None, generator=generator,
                       progress=(lambda n: progress(1)) if progress else None, use_cache=use_cache)
        codes = torch.cat([codes, out.tokens[:, prompt.shape[1] :].cpu()], dim=1)
        if on_window is not None:
            on_window(codes)
    return codes


def piece_seconds(lengths: list[float], sampled: float) -> float:
    """The length of the piece a sample is told it opens (Jukebox's total-length conditioning): the median length of
    the requested artist's tracks, or what is sampled if longer. The top prior learnt every window's timing as a
    position in its whole track; a 4 s sample told that its piece lasts 4 s would carry the timing of the shortest
    tracks (another artist's, often) instead of its own artist's.

    >>> piece_seconds([30.0, 190.0, 40.0], 4.0), piece_seconds([3.0, 2.5], 4.0)
    (40.0, 4.0)
    """
    return max(statistics.median(lengths), sampled) if lengths else sampled


def top_conditioning(prior: Prior, cond: torch.Tensor, total_seconds: float | torch.Tensor,
                     lyrics: str | list[str]):
    """The top prior's inputs for codes [start, end): timing for each code (one spare position for the code that
    ``generate`` samples last and never feeds back) in a piece of ``total_seconds`` (one length, or one per row),
    lyrics (one text, or one per row) as memory."""
    cfg, device = prior.cfg, next(prior.parameters()).device
    B = cond.shape[0]
    extra = {}
    if cfg.lyrics:
        chars = chars_batch([lyrics] * B if isinstance(lyrics, str) else lyrics, cfg.max_chars).to(device)
        with torch.no_grad():
            extra = {"memory": prior.lyrics(chars), "memory_mask": chars != 0}
    totals = torch.as_tensor(total_seconds, dtype=torch.float32, device=device).expand(B)

    def inputs(start: int, end: int) -> dict:
        seconds = position_seconds(torch.full((B,), start * cfg.hop), end - start + 1, cfg.hop, cfg.sample_rate)
        with torch.no_grad():
            x_add = prior.additive(seconds.to(device), totals)
        return {"cond": cond.to(device), "x_add": x_add, **extra}

    return inputs


def upsampler_conditioning(prior: Prior, cond: torch.Tensor, upper: torch.Tensor):
    """An upsampler's inputs for codes [start, end): the level above's codes over the window, through its conv net."""
    r, device = prior.cfg.ratio, next(prior.parameters()).device

    def inputs(start: int, end: int) -> dict:
        with torch.no_grad():
            x_add = prior.additive(upper=upper[:, start // r : math.ceil(end / r)].to(device))[:, : end - start]
        return {"cond": cond.to(device), "x_add": torch.cat([x_add, x_add[:, -1:]], dim=1)}

    return inputs


def upsample_in_spans(prior: Prior, cond: torch.Tensor, upper: torch.Tensor, spans: int, sampling: SamplingConfig,
                      generator: torch.Generator, keep: int, progress=None, use_cache: bool = True) -> torch.Tensor:
    """An upsampler's codes (B, len(upper) x ratio) sampled as ``spans`` stretches of the piece side by side in one
    batch of B x spans rows, each from the level above's codes over it alone: a step of the batch costs about what a
    step of one row does on a GPU, so a level is sampled about ``spans`` times sooner, with a seam between stretches."""
    r = prior.cfg.ratio
    B, total = upper.shape[0], upper.shape[1] * r
    length = math.ceil(total / spans / r) * r  # codes per stretch, on a code of the level above
    spans = math.ceil(total / length)
    rows = torch.nn.functional.pad(upper, (0, spans * length // r - upper.shape[1])).reshape(B * spans, length // r)
    last, step = total - (spans - 1) * length, [0]  # the last stretch's real codes; past them it samples padding

    def count(_: int) -> None:  # one code per stretch a step; the padding past the last stretch's end not counted
        step[0] += 1
        progress(spans - (step[0] > last))

    codes = sample_level(prior, torch.zeros(B * spans, 0, dtype=torch.long), length,
                         upsampler_conditioning(prior, cond.repeat_interleave(spans, 0), rows), sampling, generator,
                         keep, progress=count if progress else None, use_cache=use_cache)
    return codes.reshape(B, spans * length)[:, :total]


# ---- the request, the prime and the decoded audio --------------------------------------------------------------------
def codes_header(pipeline: Path) -> dict:
    """The cached codes' header (labels, tracks) without their tensors."""
    from safetensors import safe_open

    path = pipeline / "codes.safetensors"
    if not path.is_file():
        raise UserError(f"{pipeline} has no trained priors yet (no codes.safetensors); train them with: nexttoken "
                        f"jukebox train --resume {pipeline}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["meta"])
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0][:100]}); delete it to encode again") from None


def usual_genre(header: dict, artist: str, genres: list[str]) -> str:
    """The genre most of ARTIST's tracks had when the priors were trained (the codes' header), among the prior's
    ``genres``; the first of them for an artist the header does not hold. Ties go to the first name in sorted order.

    >>> header = {"tracks": [{"artist": "a", "genre": g} for g in ("reel", "jig", "polka")]}
    >>> usual_genre(header, "a", ["reel", "jig"]), usual_genre(header, "b", ["reel", "jig"])
    ('jig', 'reel')
    """
    seen = [t["genre"] for t in header["tracks"] if t["artist"] == artist and t["genre"] in genres]
    return max(sorted(set(seen)), key=seen.count) if seen else genres[0]


def labels_of(pipeline: Path, cfg: SampleConfig, vq) -> dict:
    """The request checked against the pipeline's priors: condition ids, codes per level, the prime's length."""
    from nexttoken.jukebox.pipeline import open_prior_config

    header = codes_header(pipeline)
    top = open_prior_config(pipeline, vq.levels[-1])
    if cfg.stop_at not in vq.levels:
        raise UserError(f"--stop-at {cfg.stop_at}: this VQ-VAE's levels are {', '.join(vq.levels)}")
    check_overlap(cfg.overlap, [open_prior_config(pipeline, lv) for lv in reversed(vq.levels[vq.levels.index(
        cfg.stop_at) :])])
    artist = known_label(cfg.artist, top.artists) if cfg.artist else top.artists[0]
    if artist not in top.artists:
        raise UserError(f"--artist {cfg.artist}: not one of the run's artists ({', '.join(top.artists)})")
    genre = known_label(cfg.genre, top.genres) if cfg.genre else usual_genre(header, artist, top.genres)
    if genre not in top.genres:
        raise UserError(f"--genre {cfg.genre}: not one of the run's genres ({', '.join(top.genres)})")
    if cfg.lyrics and not top.lyrics:
        raise UserError("--lyrics: this run's top prior was trained without lyrics")
    if len(cfg.lyrics) > top.max_chars:
        # the prior reads the first max_chars characters of a piece's lyrics at every window, in training as here:
        # the words past them would never be sung
        raise UserError(f"--lyrics: {len(cfg.lyrics)} characters; this run's top prior reads at most "
                        f"{top.max_chars} (its --max-chars)")
    top_hop = vq.hops[-1]
    prime_seconds = 0.0
    if cfg.prime:
        length = len(read_audio(cfg.prime, vq.sample_rate)) / vq.sample_rate
        asked = min(PRIME_SECONDS, length) if cfg.prime_seconds is None else cfg.prime_seconds
        if asked > length:
            raise UserError(f"--prime-seconds {asked:g}: {cfg.prime} lasts {length:.2f} s")
        prime_seconds = int(asked * vq.sample_rate) // top_hop * top_hop / vq.sample_rate
        if prime_seconds <= 0:
            given = f"--prime {cfg.prime} lasts {length:.3g} s" if cfg.prime_seconds is None else \
                f"--prime-seconds {asked:g} of {cfg.prime}"
            raise UserError(f"{given}: less than one top-level code ({top_hop} samples)")
    if round(cfg.seconds * vq.sample_rate) < 1:
        raise UserError(f"--seconds {cfg.seconds:g}: less than one sample at this run's {vq.sample_rate} Hz")
    total = prime_seconds + cfg.seconds
    if total > top.max_seconds:
        raise UserError(f"--seconds {cfg.seconds:g}{' + --prime-seconds' if cfg.prime else ''}: at most "
                        f"{top.max_seconds:g} s, the longest piece this run's timing embedding covers")
    if cfg.total_seconds is not None and not total <= cfg.total_seconds <= top.max_seconds:
        raise UserError(f"--total-seconds {cfg.total_seconds:g}: between the {total:g} s sampled and "
                        f"{top.max_seconds:g} s, the longest piece this run's timing embedding covers")
    piece = cfg.total_seconds or piece_seconds([t["seconds"] for t in header["tracks"] if t["artist"] == artist],
                                               total)
    samples = math.ceil(total * vq.sample_rate / top_hop) * top_hop
    return {"cond": [top.artists.index(artist), len(top.artists) + top.genres.index(genre)], "artist": artist,
            "genre": genre, "codes": [samples // h for h in vq.hops], "samples": round(total * vq.sample_rate),
            "prime_seconds": prime_seconds, "total_seconds": piece}


def check_overlap(overlap: float, priors: list) -> None:
    """Refuse an ``--overlap`` that keeps so much of a window that the next adds no code (``plan_windows`` would
    then advance by a single code, or an upsampler's ratio, per window: a full window's compute for each)."""
    p = min(priors, key=lambda p: (p.context - p.ratio) / p.context)
    if round(overlap * p.context) > p.context - p.ratio:
        raise UserError(f"--overlap {overlap:g} keeps the whole {p.context}-code context of the {p.level} prior as "
                        f"the prompt, leaving no code to sample; at most {(p.context - p.ratio) / p.context:g} works "
                        "with this run's priors")


def prime_codes(pipeline: Path, prime: str, seconds: float, vq, device: torch.device) -> list[torch.Tensor]:
    """Every level's codes (1, N) of the recording's first ``seconds`` (whole top-level codes, as ``labels_of``
    cut them)."""
    from nexttoken.jukebox.pipeline import load_vqvae

    samples = round(seconds * vq.sample_rate) // vq.hops[-1] * vq.hops[-1]
    audio = torch.from_numpy(read_audio(prime, vq.sample_rate)[:samples])[None]
    vqvae = load_vqvae(pipeline, device)
    codes = [c.cpu() for c in vqvae.encode(audio.to(device))]
    del vqvae
    return codes


def decode_level(pipeline: Path, out: Path, level: str, codes: torch.Tensor, labels: dict,
                 device: torch.device) -> tuple[list[Path], Path]:
    """The level's codes as audio: a WAV per sample and one spectrogram PNG of them all."""
    from nexttoken.jukebox.figures import spectrogram_png
    from nexttoken.jukebox.pipeline import load_vqvae

    vqvae = load_vqvae(pipeline, device)
    i = vqvae.config.levels.index(level)
    with torch.no_grad():
        audio = vqvae.decode(codes.to(device), i)[:, : labels["samples"]].cpu().numpy()
    sr = vqvae.config.sample_rate
    del vqvae
    names = [f"{level}.wav"] if len(audio) == 1 else [f"{level}-{k + 1}.wav" for k in range(len(audio))]
    wavs = [write_wav(out / name, a, sr) for name, a in zip(names, audio)]
    title = f"{labels['artist']}, {labels['genre']}: {level} level"
    png = spectrogram_png(list(audio), sr, out / f"{level}.png", [title] * len(audio))
    return wavs, png


# ---- the sample folder -----------------------------------------------------------------------------------------------
def _state(path: Path, level: str) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    f = path / f"{level}.safetensors"
    if not f.is_file():
        return None, None, False
    tensors, meta = load_tensors(f)
    return tensors["codes"], tensors["rng"], bool(meta.get("done"))


def sampled_from(out: Path) -> Path:
    """The pipeline folder a sampling folder was sampled from, as it saved it."""
    source = Run.open(out, KIND).config.get("pipeline")
    if source is None:
        raise UserError(f"{out} does not say which pipeline it was sampled from; give it: nexttoken jukebox sample "
                        f"RUN --resume {out}")
    if not Path(source).is_dir():
        raise UserError(f"{out} was sampled from {source}, which is no longer there; give the pipeline where it is "
                        f"now: nexttoken jukebox sample RUN --resume {out}")
    return Path(source)


def sample_run(pipeline: Path, out: Path, cfg: SampleConfig, sampling: SamplingConfig, device: torch.device,
               resume: bool = False) -> list[LevelResult]:
    """Sample into ``out`` (new), or continue the sampling in ``out`` (``resume``: its own settings; only
    ``stop_at`` may change). Returns what each level sampled now."""
    from nexttoken.jukebox.pipeline import open_pipeline, vqvae_config

    open_pipeline(pipeline)
    vq = vqvae_config(pipeline)
    if resume:
        before = Run.open(out, KIND).config
        source = before.get("pipeline")  # a relative path (older folders) resolves from here
        moved = source is not None and Path(source).resolve() != pipeline.resolve()
        if moved and Path(source).is_dir():
            raise UserError(f"{out} was sampled from {source}, not {pipeline}; continue it with: nexttoken jukebox "
                            f"sample {source} --resume {out}")
        if moved:  # its pipeline was moved or renamed: this one, if its priors know the request by the same ids
            request = load(SampleConfig, before.get("request"), str(out / "config.json"))
            if labels_of(pipeline, replace(request, prime=""), vq)["cond"] != before["labels"]["cond"]:
                raise UserError(f"{out} was sampled from {source}, which is no longer there, and {pipeline}'s priors "
                                f"name its artist and genre otherwise: it is not that pipeline")
        run = Run.resume(out, KIND)
        if moved:
            run.amend({"pipeline": str(pipeline.resolve())}, plan=False)
        saved = load(SampleConfig, run.config.get("request"), str(out / "config.json"))
        saved.stop_at = cfg.stop_at
        cfg, sampling = check(saved), load(SamplingConfig, run.config.get("sampling"), str(out / "config.json"))
        labels = run.config["labels"]
    else:
        labels = labels_of(pipeline, cfg, vq)  # checks the request against the run before any folder is made
        prime = prime_codes(pipeline, cfg.prime, labels["prime_seconds"], vq, device) if cfg.prime else None
        run = Run.create(out, {"request": asdict(cfg), "sampling": asdict(sampling),
                               "pipeline": str(pipeline.resolve()), "labels": labels}, KIND)
    with run:
        if not resume and prime is not None:
            save_tensors(out / "prime.safetensors", {n: c for n, c in zip(vq.levels, prime)})
        prime = load_tensors(out / "prime.safetensors")[0] if (out / "prime.safetensors").is_file() else {}
        cond = torch.tensor([labels["cond"]] * cfg.n)
        results, above = [], None
        for level in reversed(vq.levels):
            i = vq.levels.index(level)
            codes, rng, done = _state(out, level)
            if not done:
                known = codes if codes is not None else \
                    prime.get(level, torch.zeros(1, 0, dtype=torch.long)).expand(cfg.n, -1).clone()
                codes, elapsed = _sample_one_level(pipeline, out, run, level, i, known, labels, cond, above, cfg,
                                                   sampling, rng, device)
                new = labels["codes"][i] - known.shape[1]
                audio_seconds = new * vq.hops[i] / vq.sample_rate * cfg.n
                results.append(LevelResult(level, new, elapsed, elapsed / max(audio_seconds, 1e-9), [], Path()))
            if not done or not (out / f"{level}.png").is_file():  # decoded as soon as its codes exist
                wavs, png = decode_level(pipeline, out, level, codes, labels, device)
                if not done:
                    results[-1].wavs, results[-1].png = wavs, png
                    run.log({"level": level, "done": True, "seconds": results[-1].seconds,
                             "real_time_factor": results[-1].real_time_factor})
            above = codes
            if level == cfg.stop_at:
                break
        sampled = [lv for lv in vq.levels if _state(out, lv)[2]]
        write_npz(out / "codes.npz", [_state(out, lv)[0] for lv in sampled], sampled,
                  [vq.hops[vq.levels.index(lv)] for lv in sampled], vq.sample_rate, labels["samples"])
    return results


def _sample_one_level(pipeline, out, run, level, i, known, labels, cond, above, cfg, sampling, rng, device):
    """Load the level's prior, sample its codes after ``known``, saving them after every window (after the whole level
    for an upsampler in ``cfg.parallel`` stretches); (codes, seconds)."""
    from nexttoken.jukebox.pipeline import load_prior

    prior = load_prior(pipeline, level, device)  # one model in memory at a time
    total = labels["codes"][i]
    generator = torch.Generator(device).manual_seed(sampling.seed * 1009 + i)  # where the draws are made
    if rng is not None:
        try:
            generator.set_state(rng)
        except RuntimeError:  # a generator's state belongs to one kind of device
            raise UserError(f"{out} was sampled on another kind of device; resume it with the --device it began "
                            "on") from None
    piece = labels.get("total_seconds", labels["prime_seconds"] + cfg.seconds)  # labels without it: the length sampled
    conditioning = top_conditioning(prior, cond, piece, cfg.lyrics) \
        if prior.cfg.is_top else upsampler_conditioning(prior, cond, above)

    def save(codes: torch.Tensor) -> None:
        save_tensors(out / f"{level}.safetensors", {"codes": codes, "rng": generator.get_state()},
                     {"done": codes.shape[1] >= total})
        run.log({"level": level, "codes": codes.shape[1], "of": total})

    t0 = time.time()
    with Progress(total - known.shape[1], f"sample {level}", unit="code", log=run.log_path) as bar:
        keep = round(cfg.overlap * prior.cfg.context)
        if cfg.parallel > 1 and not prior.cfg.is_top:  # saved once the level is whole
            rest = above[:, known.shape[1] // prior.cfg.ratio :]  # a prime's codes stay; the stretches share the rest
            codes = torch.cat([known, upsample_in_spans(prior, cond, rest, cfg.parallel, sampling, generator, keep,
                                                        bar.update)], dim=1)
            save(codes)
        else:
            codes = sample_level(prior, known, total, conditioning, sampling, generator, keep, save, bar.update)
    return codes, time.time() - t0


def describe(results: list[LevelResult], out: Path) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.level:6s} {r.codes:7,d} codes in {r.seconds:6.1f} s: real-time factor "
                     f"{r.real_time_factor:.2f} (below 1 is faster than real time); "
                     f"{', '.join(str(w) for w in r.wavs)}, {r.png}")
    if not results:
        lines.append(f"{out}: every level asked for is already sampled")
    return "\n".join(lines)


