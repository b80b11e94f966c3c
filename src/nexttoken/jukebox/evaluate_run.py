"""`nexttoken jukebox evaluate RUN`: the paper's measures for a trained pipeline folder, printed side by side and
written to RUN/evaluation.json.

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341:

- reconstruction per level on held-out clips (``evaluate.evaluate_codec``), beside an EnCodec-architecture codec
  (Défossez et al. 2022, https://arxiv.org/abs/2210.13438) trained from scratch on the same clips, for the same steps,
  with the same loss, at each level's bitrate (kept in RUN/baseline-<level>, so a second evaluation reuses it), and
  beside other pipelines' VQ-VAEs (``--compare``: the ``--no-restarts`` ablation);
- held-out bits per second of audio at each level, against a unigram model of the training codes;
- conditioning: an artist classifier trained on real clips names the requested artist in clips sampled through all
  three levels (``fidelity.py``);
- lyrics: how often the top prior's attention argmax falls on the syllable being sung (``alignment.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from nexttoken.config import option
from nexttoken.errors import UserError, warn
from nexttoken.jukebox.alignment import alignment_score, cross_patterns, plot_alignment, timed_lines
from nexttoken.jukebox.evaluate import EncodecBaseline, evaluate_codec, matching_baseline, restart_rule
from nexttoken.jukebox.fidelity import features, fit_artist_classifier, recognition
from nexttoken.jukebox.pipeline import (clips_of, codes_of, data_config, load_prior, load_vqvae, open_pipeline,
                                        saved_vqvae_settings, vqvae_config, vqvae_step)
from nexttoken.jukebox.sample import (JUKEBOX_SAMPLING, codes_header, piece_seconds, sample_level,
                                      top_conditioning, upsampler_conditioning, usual_genre)
from nexttoken.jukebox.train import (clip_batches, flat_levels, held_out, score_level, scored_split, scored_word,
                                     summed_vqvae_loss, warn_unheld, window_rows)
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_json, read_json
from nexttoken.runs import Run
from nexttoken.training import count_rows, fit

BASELINE_KIND = "jukebox.baseline"


@dataclass
class EvaluateConfig:
    baselines: list[str] = option(default_factory=lambda: ["bottom", "middle", "top"],
                                  help="levels whose bitrate an EnCodec-architecture codec is trained at (none: '')")
    compare: list[str] = option(default_factory=list, help="other pipeline folders whose VQ-VAE is scored on these "
                                "held-out clips (e.g. the --no-restarts ablation)")
    val_clips: int = option(64, "held-out clips scored for reconstruction", ge=1, le=10**6)
    clips_per_artist: int = option(4, "clips sampled per artist for artist recognition (0: skip)", ge=0, le=1000)
    seconds: float = option(2.0, "length of each sampled clip", gt=0, le=600)
    windows: int = option(64, "held-out windows per level for bits per second", ge=1, le=10**6)
    lines: int = option(32, "lyric lines scored for alignment (held out; as many training lines choose the head)",
                        ge=1, le=10**6)
    seed: int = option(0, "seed of the sampled clips", ge=0)


@dataclass
class Evaluation:
    reconstruction: dict = field(default_factory=dict)  # codec name -> level -> metrics
    bits_per_second: dict = field(default_factory=dict)  # level -> {prior, unigram, codes}
    recognition: dict | None = None
    alignment: dict | None = None
    files: dict = field(default_factory=dict)
    scored_on: str = "val"  # 'train' when no track is held out, so reconstruction and bits/s are on training audio


def train_baseline(path: Path, level: str, clips, val: torch.Tensor, device: torch.device) -> dict:
    """The EnCodec-architecture codec at ``level``'s bitrate, trained like the VQ-VAE (same clips, batches, steps,
    loss and optimiser) in ``path/baseline-<level>``, or read from there; its held-out metrics."""
    vq = vqvae_config(path)
    opts, optim, loop = saved_vqvae_settings(path, {})
    # the steps the VQ-VAE took (a time budget may have stopped it short of its --steps); the budget stays a ceiling
    loop = replace(loop, steps=vqvae_step(path))
    base = matching_baseline(vq, vq.levels.index(level))
    threshold, revive = restart_rule(loop.batch_size * vq.clip_samples / base.hop, base.codebook_size)
    cfg = replace(base, restart_threshold=threshold, revive_count=revive)
    stage = path / f"baseline-{level}"
    model = EncodecBaseline(cfg).to(device)
    settings = {"baseline": asdict(cfg), "optim": asdict(optim), "loop": asdict(loop)}
    resume = (stage / "config.json").is_file()
    with (Run.resume(stage, BASELINE_KIND) if resume else Run.create(stage, settings, BASELINE_KIND)) as run:
        if (stage / "summary.json").is_file():  # trained to the end by an earlier evaluation
            steps, _, _ = run.load_checkpoint(model, restore_rng_state=False)
        else:
            steps = fit(model, clip_batches(clips, loop.batch_size, loop.seed), optim, loop, run, resume=resume,
                        eval_fn=lambda m: flat_levels(evaluate_codec(m, val)), loss_fn=summed_vqvae_loss,
                        weight_fn=count_rows).steps
            run.write_summary({"steps": steps})
    metrics = evaluate_codec(model, val)["encodec"]
    return {**metrics, "stages": cfg.num_quantizers, "params": sum(p.numel() for p in model.parameters()),
            "steps": steps}


def codec_metrics(path: Path, val: torch.Tensor, device: torch.device) -> dict:
    return evaluate_codec(load_vqvae(path, device), val)


@torch.no_grad()
def sample_codes(path: Path, conds: torch.Tensor, lyrics: list[str], seconds: float, pieces: torch.Tensor, seed: int,
                 device: torch.device, progress: bool = True, log: Path | None = None) -> list[torch.Tensor]:
    """Every level's codes (indexed like the VQ-VAE's levels, bottom first): ``seconds`` sampled top down for the
    condition rows ``conds`` (B, 2), each the opening of a piece of ``pieces`` (B,) seconds, one prior in memory at a
    time."""
    vq = vqvae_config(path)
    samples = math.ceil(seconds * vq.sample_rate / vq.hops[-1]) * vq.hops[-1]
    codes: list[torch.Tensor] = [torch.empty(0)] * len(vq.levels)
    with Progress(sum(samples // hop for hop in vq.hops), f"evaluate: sampling {len(conds)} clips through every level",
                  unit="code", enabled=progress, log=log) as bar:
        for i in reversed(range(len(vq.levels))):
            prior = load_prior(path, vq.levels[i], device)
            conditioning = top_conditioning(prior, conds, pieces, lyrics) if prior.cfg.is_top else \
                upsampler_conditioning(prior, conds, codes[i + 1])
            codes[i] = sample_level(prior, torch.zeros(len(conds), 0, dtype=torch.long), samples // vq.hops[i],
                                    conditioning, JUKEBOX_SAMPLING,
                                    torch.Generator(device).manual_seed(seed * 1009 + i), prior.cfg.context // 2,
                                    progress=bar.update)
            del prior
    return codes


@torch.no_grad()
def through_levels(vqvae, audio: torch.Tensor, batch: int = 8, progress=None) -> list[torch.Tensor]:
    """(B, T) audio passed through each level's encoder, codebook and decoder in one forward pass of an eval-mode
    VQ-VAE (its codebooks stay): per level, what that level keeps of it. ``progress(n)`` after each batch.

    A few clips at a time, as ``evaluate_codec`` reads them: the full-rate activations of many clips at once outgrow
    a CPU's caches and run slower per clip."""
    device = next(vqvae.parameters()).device
    outs = []
    for part in audio.split(batch):
        outs.append(vqvae(part.to(device)).recons)
        if progress is not None:
            progress(len(part))
    return [torch.cat([o[i].cpu() for o in outs]) for i in range(len(outs[0]))]


def artist_recognition(path: Path, clips, cfg: EvaluateConfig, device: torch.device, progress: bool = True,
                       log: Path | None = None) -> dict:
    """The artist classifier on clips sampled through all three levels (``accuracy``), and per level (``levels``):
    a classifier trained on real clips passed through that level of the VQ-VAE, applied to that level's sampled codes
    decoded, so a level's recognition compares like with like and shows where on the way down the artist is lost."""
    vq = vqvae_config(path)
    top = load_prior(path, vq.levels[-1], device).cfg
    heard = {clips.tracks[int(t)].artist for t in clips.track[clips.rows("train")].unique()}
    gone = [a for a in top.artists if a not in heard]
    if gone:
        where = data_config(open_pipeline(path)).audio
        if len(gone) == len(top.artists):
            raise UserError(f"artist recognition: none of the run's artists ({', '.join(top.artists)}) has training "
                            f"audio in {where} now (--clips-per-artist 0 skips it)")
        # the classifier cannot name an artist it never heard: its clips would count as misses of the prior's
        warn(f"artist recognition leaves out {', '.join(gone)}: the run was trained on them, but {where} holds no "
             f"training audio of theirs now")
    artists = [a for a in top.artists if a in heard]
    real = {}  # split -> (audio, labels): up to 64 real clips per artist, to train on and to check the classifier
    for split in ("train", "val"):
        audio, labels = [], []
        for artist in artists:
            rows = [r for r in clips.rows(split).tolist() if clips.tracks[int(clips.track[r])].artist == artist]
            rows = rows[:: max(1, len(rows) // 64)][:64]
            if rows:
                audio.append(clips.audio(rows))
                labels += [artist] * len(rows)
        real[split] = (torch.cat(audio), labels) if audio else None
    real_on = "val" if real["val"] else "train"  # with no held-out track, the classifier is checked on its own
    real["val"] = real["val"] or real["train"]
    asked, conds, lyrics, pieces = [], [], [], []
    lines = {}
    for t in clips.tracks:
        lines.setdefault(t.artist, t.lyrics)
    header = codes_header(path)  # the labels the priors learnt, whatever the audio folder says now
    for artist in artists:
        genre = usual_genre(header, artist, top.genres)
        piece = piece_seconds([t.seconds for t in clips.tracks if t.artist == artist], cfg.seconds)
        for _ in range(cfg.clips_per_artist):
            asked.append(artist)
            conds.append([top.artists.index(artist), len(top.artists) + top.genres.index(genre)])
            lyrics.append(lines.get(artist, ""))  # the sung voices sing a line of their own
            pieces.append(piece)  # the opening of a piece as long as the artist's usual, as `sample` asks
    codes = sample_codes(path, torch.tensor(conds), lyrics, cfg.seconds, torch.tensor(pieces), cfg.seed, device,
                         progress, log)
    vqvae = load_vqvae(path, device)

    with Progress(sum(len(audio) for audio, _ in real.values()), "evaluate: real clips through every level",
                  unit="clip", enabled=progress, log=log) as bar:
        coded = {split: through_levels(vqvae, audio, progress=bar.update) for split, (audio, _) in real.items()}

    def recognised(x: torch.Tensor, xv: torch.Tensor, heard: torch.Tensor) -> dict:
        """The classifier trained on the real training clips ``x``, scored on ``heard`` and on the real held-out
        clips ``xv``."""
        classifier = fit_artist_classifier(features(x, clips.sample_rate), real["train"][1])
        return asdict(recognition(classifier, features(heard, clips.sample_rate), asked,
                                  features(xv, clips.sample_rate), real["val"][1]))

    decoded = [vqvae.decode(c.to(device), i).cpu() for i, c in enumerate(codes)]
    result = recognised(real["train"][0], real["val"][0], decoded[0])
    result["levels"] = {level: recognised(coded["train"][i], coded["val"][i], decoded[i])
                        for i, level in enumerate(vq.levels)}
    result["real_on"] = real_on
    return result


def lyrics_alignment(path: Path, codes, cfg: EvaluateConfig, device: torch.device) -> tuple[dict | None, Path | None]:
    prior = load_prior(path, codes.levels[-1], device)
    score = alignment_score(prior, codes, cfg.lines)
    if score is None:
        return None, None
    s = (timed_lines(codes, "val") or codes.segments("train"))[0]
    track = codes.tracks[int(codes.segment_track[s])]
    batch = window_rows(codes, prior.cfg, [s], [0])
    pattern = cross_patterns(prior, {k: v.to(device) for k, v in batch.items()}).cpu()[score.layer, 0, score.head]
    n = min(len(codes.segment(codes.level("top"), s)), prior.cfg.context)
    png = plot_alignment(pattern[:n], track["lyrics"], batch["seconds"][0, :n].numpy(), path / "alignment.png",
                         f"held-out line, cross-attention block {score.layer} head {score.head}",
                         codes.timings.get(track["id"]))
    return asdict(score), png


def evaluate_run(path: Path, cfg: EvaluateConfig, device: torch.device, progress: bool = True) -> Evaluation:
    """Every measure of a pipeline folder, each with its progress on stderr and in RUN/log.txt."""
    log = open_pipeline(path).log_path
    if not (path / "top" / "summary.json").is_file():
        raise UserError(f"{path} has no trained top prior yet; finish it with: nexttoken jukebox train --resume {path}")
    vq = vqvae_config(path)
    unknown = [b for b in cfg.baselines if b not in vq.levels]
    if unknown:
        raise UserError(f"--baselines {unknown[0]}: this VQ-VAE's levels are {', '.join(vq.levels)}")
    for other in map(Path, cfg.compare):
        open_pipeline(other)
        rate = vqvae_config(other).sample_rate
        if rate != vq.sample_rate:  # its scores would be of audio it was never made for
            raise UserError(f"--compare {other}: its VQ-VAE codes {rate} Hz audio, {path}'s clips are "
                            f"{vq.sample_rate} Hz; compare pipelines of one sample rate")
        vqvae_step(other)  # an unfinished VQ-VAE is refused now, not after the baselines have trained
    clips = clips_of(path)
    val = held_out(clips, cfg.val_clips)
    if scored_split(clips) == "train":
        warn_unheld()
    # the baselines first: each trains (or is read back) with its own progress
    baselines = {f"encodec at {level} bitrate": {level: train_baseline(path, level, clips, val, device)}
                 for level in cfg.baselines}
    codecs = {f"vqvae ({path.name})": path}
    for other in map(Path, cfg.compare):
        restarts = read_json(other / "vqvae" / "summary.json").get("restarts")
        codecs[f"vqvae ({other.name}, restarts {restarts})"] = other
    ev = Evaluation(scored_on=scored_split(clips))
    on = scored_word(ev.scored_on)
    with Progress(len(codecs), f"evaluate: reconstruction of {len(val)} {on} clips", unit="VQ-VAE",
                  enabled=progress, log=log) as bar:
        for name, codec in codecs.items():
            ev.reconstruction[name] = codec_metrics(codec, val, device)
            bar.update(1)
    ev.reconstruction.update(baselines)
    codes = codes_of(path, device)
    trained = [level for level in reversed(vq.levels) if (path / level / "summary.json").is_file()]
    with Progress(len(trained), f"evaluate: {on} bits per second", unit="prior", enabled=progress,
                  log=log) as bar:
        for level in trained:
            s = score_level(load_prior(path, level, device), codes, most=cfg.windows)
            ev.bits_per_second[level] = {"prior": s.bits_per_second, "unigram": s.unigram_bits_per_second,
                                         "nats_per_code": s.nats_per_code, "codes": s.codes}
            bar.update(1)
    if cfg.clips_per_artist and len(trained) == len(vq.levels):
        ev.recognition = artist_recognition(path, clips, cfg, device, progress, log)
    ev.alignment, png = lyrics_alignment(path, codes, cfg, device)
    if png is not None:
        ev.files["alignment"] = str(png)
    atomic_write_json(path / "evaluation.json", {"config": asdict(cfg), **asdict(ev)})
    return ev


def format_report(ev: Evaluation) -> str:
    on = scored_word(ev.scored_on)
    unheld = " (no track is held out)" if on == "training" else ""
    out = [f"reconstruction of {on} clips{unheld} (spectral convergence dB, "
           "lower is better; SI-SDR dB; codes in use)"]
    for codec, levels in ev.reconstruction.items():
        for level, m in levels.items():
            out.append(f"  {codec:42s} {level:7s} {m['bits_per_second'] / 1000:6.2f} kbit/s  SC "
                       f"{m['spectral_convergence_db']:6.1f}  STFT {m['stft_distance']:.4f}  log-mel "
                       f"{m['log_mel_l1']:.3f}  SI-SDR {m['si_sdr_db']:6.1f}  usage {100 * m['usage']:5.1f}%")
    out.append(f"{on} bits per second of audio (prior vs unigram of the training codes)")
    for level, b in ev.bits_per_second.items():
        out.append(f"  {level:7s} {b['prior']:9.0f} vs {b['unigram']:9.0f}  ({b['codes']:,} codes)")
    if ev.recognition:
        r = ev.recognition
        out.append(f"artist recognised in {r['clips']} sampled clips: {100 * r['accuracy']:.0f}% (chance "
                   f"{100 * r['chance']:.0f}%; the classifier on {scored_word(r.get('real_on'))} real clips "
                   f"{100 * r['real_accuracy']:.0f}%)")
        out.append("  " + ", ".join(f"{a} {100 * v:.0f}%" for a, v in r["per_artist"].items()))
        if r.get("levels"):
            out.append("  each level's sampled codes decoded alone, against real clips through the same level: "
                       + ", ".join(f"{level} {100 * v['accuracy']:.0f}% (real {100 * v['real_accuracy']:.0f}%)"
                                   for level, v in reversed(r["levels"].items())))
    if ev.alignment:
        a = ev.alignment
        out.append(f"lyrics alignment on {a['lines']} held-out lines ({a['positions']:,} sung positions): attention "
                   f"argmax on the sung syllable {100 * a['accuracy']:.0f}% (block {a['layer']} head {a['head']}; "
                   f"all heads {100 * a['mean_accuracy']:.0f}%, linear heuristic {100 * a['linear']:.0f}%, timing "
                   f"alone {100 * a['clock']:.0f}%, chance {100 * a['chance']:.0f}%)")
        out.append(f"  where timing alone guesses wrong, the head finds the sung syllable {100 * a['off_clock']:.0f}% "
                   f"(chance {100 * a['off_clock_chance']:.0f}%)")
        out.append(f"  the sung lines with their own lyrics {a['own_bits']:.0f} bits/s, with another line's "
                   f"{a['swapped_bits']:.0f}")
    return "\n".join(out)
