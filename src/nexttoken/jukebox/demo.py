"""jukebox's section of `nexttoken demo`, and the page `nexttoken jukebox report RUN` writes: an original clip beside
its reconstruction from each level, sampled clips for two artists, a lyrics-conditioned clip with the top prior's
attention over its words, and the measures the folder holds.

    nexttoken jukebox report RUN            # RUN/report/report.html
    nexttoken demo --only jukebox           # trains a small pipeline first (a few CPU minutes)

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nexttoken.errors import UserError, warn
from nexttoken.jukebox.alignment import alignment_score, plot_alignment, sampled_attention
from nexttoken.jukebox.audio import write_wav
from nexttoken.jukebox.data import DataConfig
from nexttoken.jukebox.figures import spectrogram_png
from nexttoken.jukebox.pipeline import (Plan, clips_of, codes_of, load_prior, load_vqvae, open_pipeline,
                                        train_everything)
from nexttoken.jukebox.sample import JUKEBOX_SAMPLING, SampleConfig, sample_run
from nexttoken.jukebox.train import VQVAEOptions, scored_word
from nexttoken.report import Section, render
from nexttoken.files import load_tensors, read_json
from nexttoken.runs import read_metrics, run_kind

# Sized for about three minutes on two free CPU cores (docs/jukebox.md): two artists of the corpus that sound apart
# (a folk fiddle tune on the piano, Renaissance polyphony for voices) and the two sung voices.
DEMO_DATA = DataConfig(artists=["folk_ryan", "palestrina", "low_voice", "high_voice"], pieces=8, piece_seconds=8.0,
                       lyrics_lines=60)
DEMO_PLAN = Plan(vqvae_steps=100, prior_steps=60)
DEMO_SECONDS = 2.0


def demo(out: Path, device) -> Section:
    """A small pipeline trained from scratch, then two artists' clips and a sung line."""
    run_dir = out / "run"
    if (run_dir / "config.json").is_file():
        train_everything(run_dir, DEMO_PLAN, VQVAEOptions(), device.type, None)
    else:
        train_everything(run_dir, DEMO_PLAN, VQVAEOptions(), device.type, DEMO_DATA)
    requests = [SampleConfig(artist="folk_ryan", seconds=DEMO_SECONDS), SampleConfig(artist="palestrina",
                                                                                      seconds=DEMO_SECONDS)]
    codes = codes_of(run_dir, device)
    line = next((t for t in codes.tracks if t["lyrics"] and t["split"] == "val"), None)
    if line is not None:
        requests.append(SampleConfig(artist=line["artist"], genre=line["genre"], lyrics=line["lyrics"],
                                     seconds=min(round(line["seconds"], 1), DEMO_SECONDS * 2)))
    dirs = []
    for k, cfg in enumerate(requests):
        folder = out / f"sample-{k}-{cfg.artist}"
        resume = (folder / "config.json").is_file()
        sample_run(run_dir, folder, cfg, replace(JUKEBOX_SAMPLING, seed=k), device, resume)
        dirs.append(folder)
    return pipeline_section(run_dir, out, device, dirs, "Jukebox: raw audio as codes, sampled back to sound")


def report(run_dir: Path, out: Path | None, device) -> Path:
    """The HTML page of a pipeline folder (default ``RUN/report/report.html``) with the samples in RUN/samples."""
    open_pipeline(run_dir)
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    dirs = sorted(p for p in (run_dir / "samples").glob("*") if p.is_dir() and _is_sample(p))
    section = pipeline_section(run_dir, out, device, dirs, f"Jukebox: {run_dir.name}")
    return render(f"nexttoken jukebox: {run_dir.name}", [section], out / "report.html")


def _is_sample(folder: Path) -> bool:
    """A sampling's folder; any other folder a user put in RUN/samples is no part of the report."""
    try:
        return run_kind(folder) == "jukebox.sample"
    except UserError as e:  # a damaged config.json: that folder is left out, the report goes on
        warn(f"the report leaves out {folder}: {e}")
        return False


def pipeline_section(run_dir: Path, out: Path, device, sample_dirs: list[Path], title: str) -> Section:
    section = Section(title)
    vq = read_json(run_dir / "vqvae" / "summary.json") if (run_dir / "vqvae" / "summary.json").is_file() else None
    if vq is None:
        return section.text(f"{run_dir} has no trained VQ-VAE yet.")
    data = vq["data"]
    section.text(f"{data['tracks']} tracks by {len(data['artists'])} artists ({', '.join(data['artists'])}), "
                 f"{60 * data['hours']:.1f} minutes at {data['sample_rate']} Hz. The three-level VQ-VAE "
                 f"({vq['params'] / 1e6:.2f} M parameters, preset {vq['preset']}) trained {vq['steps']} steps in "
                 f"{vq['train_seconds']:.0f} s on {vq['device']}; each level alone rebuilds "
                 f"{scored_word(vq.get('scored_on'))} audio:")
    section.table([{"level": n, "kbit/s": m["bits_per_second"] / 1000, "spectral convergence dB":
                    m["spectral_convergence_db"], "SI-SDR dB": m["si_sdr_db"], "codes in use %": 100 * m["usage"]}
                   for n, m in vq["levels"].items()])
    _reconstruction(run_dir, out, device, section)
    rows = []
    for level in ("top", "middle", "bottom"):
        f = run_dir / level / "summary.json"
        if f.is_file():
            s = read_json(f)
            on = scored_word(s.get("scored_on"))
            rows.append({"prior": level, "parameters": s["params"], "steps": s["steps"],
                         "train s": s["train_seconds"], f"{on} bits/s": s["bits_per_second"],
                         "unigram bits/s": s["unigram_bits_per_second"]})
    if rows:
        section.table(rows, f"priors: {on} bits per second of audio, beside a unigram model of the codes")
    for folder in sample_dirs:
        _sample(run_dir, folder, device, section)
    evaluation = run_dir / "evaluation.json"
    if evaluation.is_file():
        from nexttoken.jukebox.evaluate_run import Evaluation, format_report

        data = read_json(evaluation)
        section.code(format_report(Evaluation(**{k: data.get(k) for k in ("reconstruction", "bits_per_second",
                                                                          "recognition", "alignment", "files",
                                                                          "scored_on")})))
        if (run_dir / "alignment.png").is_file():
            section.image(run_dir / "alignment.png", "the top prior's attention over a held-out line (evaluate)")
    return section


def _reconstruction(run_dir: Path, out: Path, device, section: Section) -> None:
    """A held-out clip of music (not a sung line) and what each level alone makes of it."""
    clips = clips_of(run_dir)
    rows = [r for r in clips.rows("val").tolist() if not clips.tracks[int(clips.track[r])].lyrics]
    if not rows:
        return
    row = rows[len(rows) // 2]
    audio = clips.audio([row])
    vqvae = load_vqvae(run_dir, device)
    with torch.no_grad():
        recons = [r.cpu()[0].numpy() for r in vqvae(audio.to(device)).recons]
    artist = clips.tracks[int(clips.track[row])].artist
    names = ["original", *vqvae.config.levels]
    wavs = [audio[0].numpy(), *recons]
    for name, a in zip(names, wavs):
        section.audio(write_wav(out / f"reconstruction-{name}.wav", a, clips.sample_rate), f"{artist}: {name}")
    section.image(spectrogram_png(wavs, clips.sample_rate, out / "reconstruction.png",
                                  [f"{artist}, held out: {n}" for n in names]),
                  "a held-out clip and its reconstruction from each level's codes alone")


def _sample(run_dir: Path, folder: Path, device, section: Section) -> None:
    config = read_json(folder / "config.json")
    request, labels = config["request"], config["labels"]
    done = [lv for lv in ("bottom", "middle", "top") if (folder / f"{lv}.png").is_file()]
    if not done:
        return
    level = done[0]
    wav = folder / f"{level}.wav" if (folder / f"{level}.wav").is_file() else folder / f"{level}-1.wav"
    rtf = {r["level"]: r["real_time_factor"] for r in read_metrics(folder) if r.get("done")}
    caption = (f"{labels['artist']}, {labels['genre']}" + (f", singing \"{request['lyrics']}\"" if request["lyrics"]
                                                           else "") + f": {request['seconds']:g} s sampled top to "
               f"{level}; real-time factor " + ", ".join(f"{k} {v:.1f}" for k, v in rtf.items()))
    section.audio(wav, caption)
    section.image(folder / f"{level}.png", caption)
    if request["lyrics"] and (folder / "top.safetensors").is_file():
        prior = load_prior(run_dir, "top", device)
        score = alignment_score(prior, codes_of(run_dir, device), most=8)
        if score is None:
            return
        codes = load_tensors(folder / "top.safetensors")[0]["codes"][0]
        pattern, seconds = sampled_attention(prior, codes, labels["cond"], labels["prime_seconds"] +
                                             request["seconds"], request["lyrics"], score.layer, score.head)
        png = plot_alignment(pattern, request["lyrics"], seconds, folder / "alignment.png",
                             f"sampled line: block {score.layer} head {score.head}")
        section.image(png, f"the top prior's attention over the lyrics while it sampled them (block {score.layer}, "
                           f"head {score.head}, chosen on training lines). On {score.lines} held-out lines its "
                           f"argmax falls on the syllable being sung {100 * score.accuracy:.0f}% of the time (linear "
                           f"heuristic {100 * score.linear:.0f}%, timing alone {100 * score.clock:.0f}%, chance "
                           f"{100 * score.chance:.0f}%); read with their own lyrics they cost "
                           f"{score.own_bits:.0f} bits/s, with another line's {score.swapped_bits:.0f}."
                           + (" This prior has not learnt to follow the words: it takes more sung lines and a longer "
                              "training (docs/jukebox.md, 'Lyrics', shows one that has)." if score.accuracy <
                              score.linear else ""))

