"""The Jukebox commands end to end on a tiny pipeline: sampling writes a WAV of the requested length per level, a
primed sample continues its recording, saved top codes are upsampled later, a killed sampling and a killed training
resume to the result of an uninterrupted one, encode/decode, evaluate and report."""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from jukebox_fixtures import (RATE, TINY_PRIOR, TINY_VQVAE, audio_folder, jukebox_cache, run_cli,  # noqa: F401
                              tiny_audio, tiny_pipeline)
from nexttoken.jukebox import sample as sample_module
from nexttoken.jukebox.audio import write_wav
from nexttoken.jukebox.codes import read_npz
from nexttoken.files import load_tensors, read_json
from nexttoken.runs import read_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def seconds_of(path) -> float:
    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def test_sampling_writes_a_wav_and_a_spectrogram_per_level_of_the_requested_length(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "s"
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "alice", "--seconds", "0.7", "--n", "2",
                    "--out", out]) == 0
    for level in ("top", "middle", "bottom"):
        for k in (1, 2):
            assert seconds_of(out / f"{level}-{k}.wav") == pytest.approx(0.7)
        assert (out / f"{level}.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.count("real-time factor") == 3
    codes = read_npz(out / "codes.npz")
    assert codes.codes["bottom"].shape[0] == 2 and codes.codes["bottom"].shape[1] * 8 >= 0.7 * RATE


def test_a_sample_opens_a_piece_as_long_as_its_artists_tracks(tiny_pipeline, tmp_path, monkeypatch):
    """The top prior heard every window's time as a position in its whole track: a sample is told it opens a piece
    of the artist's median track length (or --total-seconds), not one as short as the seconds sampled."""
    tracks = sample_module.codes_header(tiny_pipeline)["tracks"]
    median = float(np.median([t["seconds"] for t in tracks if t["artist"] == "alice"]))
    assert median > 0.5
    told = []
    real = sample_module.top_conditioning
    monkeypatch.setattr(sample_module, "top_conditioning", lambda p, c, total, ly: told.append(total) or real(p, c,
                                                                                                         total, ly))
    for extra, piece in (([], median), (["--total-seconds", "3"], 3.0)):
        out = tmp_path / f"s{len(told)}"
        assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "alice", "--seconds", "0.5", "--stop-at",
                        "top", *extra, "--out", out]) == 0
        assert told[-1] == pytest.approx(piece)
        assert read_json(out / "config.json")["labels"]["total_seconds"] == pytest.approx(piece)


def test_a_sung_line_with_lyrics(tiny_pipeline, tmp_path):
    out = tmp_path / "sung"
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "low_voice", "--lyrics", "daki mosu",
                    "--seconds", "0.5", "--out", out, "--stop-at", "top"]) == 0
    assert seconds_of(out / "top.wav") == pytest.approx(0.5) and not (out / "middle.wav").exists()


def test_a_recording_shorter_than_the_default_prime_is_kept_whole(tiny_pipeline, tiny_audio, tmp_path):
    """No --prime-seconds: up to 2 s of the recording, all of a shorter one (cut to whole top-level codes)."""
    audio, _ = soundfile.read(str(tiny_audio / "bob" / "tune0.wav"), dtype="float32")
    write_wav(tmp_path / "short.wav", audio[: int(0.7 * RATE)], RATE)
    out = tmp_path / "short"
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "bob", "--prime", tmp_path / "short.wav",
                    "--seconds", "0.5", "--stop-at", "top", "--out", out]) == 0
    assert seconds_of(out / "top.wav") == pytest.approx(int(0.7 * RATE) // 128 * 128 / RATE + 0.5)


def test_a_primed_sample_keeps_the_recordings_codes_and_continues_it(tiny_pipeline, tiny_audio, tmp_path):
    out = tmp_path / "primed"
    prime = tiny_audio / "bob" / "tune0.wav"
    kept = int(0.32 * RATE) // 128 * 128  # the prime is cut to whole top-level codes
    audio, _ = soundfile.read(str(prime), dtype="float32")
    write_wav(tmp_path / "cut.wav", audio[:kept], RATE)
    assert run_cli(["jukebox", "encode", tiny_pipeline, tmp_path / "cut.wav", "-o", tmp_path / "prime.npz"]) == 0
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "bob", "--prime", prime, "--prime-seconds",
                    "0.32", "--seconds", "0.5", "--out", out]) == 0
    assert seconds_of(out / "bottom.wav") == pytest.approx(kept / RATE + 0.5)
    sampled, whole = read_npz(out / "codes.npz").codes, read_npz(tmp_path / "prime.npz").codes
    for level, hop in (("top", 128), ("middle", 32), ("bottom", 8)):
        assert np.array_equal(sampled[level][0, : kept // hop], whole[level])


def test_a_primed_sample_upsampled_in_stretches_keeps_the_prime_and_shares_out_the_rest(tiny_pipeline, tiny_audio,
                                                                                         tmp_path):
    from nexttoken.jukebox.pipeline import load_prior

    out = tmp_path / "primed"
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "bob", "--prime", tiny_audio / "bob" / "tune0.wav",
                    "--prime-seconds", "0.32", "--seconds", "0.5", "--parallel", "2", "--stop-at", "middle",
                    "--out", out]) == 0
    codes = {k: torch.from_numpy(v).long() for k, v in read_npz(out / "codes.npz").codes.items()}
    kept = load_tensors(out / "prime.safetensors")[0]["middle"]
    assert torch.equal(codes["middle"][:, : kept.shape[1]], kept)
    rest = sample_module.upsample_in_spans(
        load_prior(tiny_pipeline, "middle", torch.device("cpu")), torch.tensor([read_json(out / "config.json")
                                                                                 ["labels"]["cond"]]),
        codes["top"][:, kept.shape[1] // 4 :], 2, sample_module.JUKEBOX_SAMPLING,
        torch.Generator().manual_seed(sample_module.JUKEBOX_SAMPLING.seed * 1009 + 1), keep=16)
    assert torch.equal(codes["middle"][:, kept.shape[1] :], rest)


def test_top_codes_saved_now_are_upsampled_later_as_in_one_go(tiny_pipeline, tmp_path):
    args = ["--artist", "bob", "--seconds", "0.6", "--seed", "3"]
    assert run_cli(["jukebox", "sample", tiny_pipeline, *args, "--out", tmp_path / "once"]) == 0
    assert run_cli(["jukebox", "sample", tiny_pipeline, *args, "--stop-at", "top", "--out", tmp_path / "later"]) == 0
    assert sorted(read_npz(tmp_path / "later" / "codes.npz").codes) == ["top"]
    assert run_cli(["jukebox", "sample", "--resume", tmp_path / "later"]) == 0  # the folder names its pipeline
    once, later = read_npz(tmp_path / "once" / "codes.npz"), read_npz(tmp_path / "later" / "codes.npz")
    for level in ("top", "middle", "bottom"):
        assert np.array_equal(once.codes[level], later.codes[level])


def test_a_sampling_resumes_only_from_the_pipeline_it_was_sampled_from(tiny_pipeline, tmp_path, monkeypatch, capsys):
    other = shutil.copytree(tiny_pipeline, tmp_path / "other", ignore=shutil.ignore_patterns("samples", "report"))
    out = tmp_path / "s"
    assert run_cli(["jukebox", "sample", other, "--seconds", "0.3", "--stop-at", "top", "--out", out]) == 0
    capsys.readouterr()
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--resume", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was sampled from {other.resolve()}, not {tiny_pipeline};" in err[0], err
    config = read_json(out / "config.json")
    (out / "config.json").write_text(json.dumps({**config, "pipeline": "other"}))  # as folders held it before
    monkeypatch.chdir(tmp_path)
    assert run_cli(["jukebox", "sample", "other", "--resume", "s", "--stop-at", "middle"]) == 0
    assert sorted(read_npz(out / "codes.npz").codes) == ["middle", "top"]
    # The pipeline moved: the folder says where it was, and continues from where it is now, which it remembers.
    moved = (tmp_path / "other").rename(tmp_path / "renamed")
    capsys.readouterr()
    assert run_cli(["jukebox", "sample", "--resume", "s", "--stop-at", "bottom"]) == 2
    assert "which is no longer there; give the pipeline where it is now" in capsys.readouterr().err
    assert run_cli(["jukebox", "sample", "renamed", "--resume", "s", "--stop-at", "bottom"]) == 0
    assert sorted(read_npz(out / "codes.npz").codes) == ["bottom", "middle", "top"]
    assert read_json(out / "config.json")["pipeline"] == str(moved.resolve())


def test_a_killed_sampling_resumes_to_the_same_codes(tiny_pipeline, tmp_path, monkeypatch):
    args = ["--artist", "alice", "--seconds", "1.0", "--seed", "5", "--overlap", "0.5"]
    assert run_cli(["jukebox", "sample", tiny_pipeline, *args, "--out", tmp_path / "whole"]) == 0
    real, calls = sample_module.generate, []

    def dies_in_the_middle_level(model, *a, **kw):
        calls.append(1)
        if model.cfg.vocab_size and len(calls) == 4:  # the top level's windows are done, the middle's begun
            raise KeyboardInterrupt
        return real(model, *a, **kw)

    monkeypatch.setattr(sample_module, "generate", dies_in_the_middle_level)
    assert run_cli(["jukebox", "sample", tiny_pipeline, *args, "--out", tmp_path / "killed"]) == 130
    monkeypatch.setattr(sample_module, "generate", real)
    saved = load_tensors(tmp_path / "killed" / "top.safetensors")[1]
    assert saved["done"] and (tmp_path / "killed" / "top.wav").is_file()
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--resume", tmp_path / "killed"]) == 0
    whole, resumed = read_npz(tmp_path / "whole" / "codes.npz"), read_npz(tmp_path / "killed" / "codes.npz")
    for level in ("top", "middle", "bottom"):
        assert np.array_equal(whole.codes[level], resumed.codes[level])


def test_a_killed_prior_training_resumes_to_the_same_weights_and_metrics(tiny_pipeline, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from nexttoken.jukebox import train as train_module

    runs = {}
    for name in ("whole", "killed"):
        folder = tmp_path / name
        shutil.copytree(tiny_pipeline, folder, ignore=shutil.ignore_patterns("top", "samples", "report"))
        runs[name] = folder
    argv = ["jukebox", "train-prior", None, "--level", "top", "--steps", "6", *TINY_PRIOR]
    assert run_cli([runs["whole"] if a is None else a for a in argv]) == 0
    real = train_module.Windows.__call__

    def interrupted_at_step_3(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written
        return real(self, step)

    monkeypatch.setattr(train_module.Windows, "__call__", interrupted_at_step_3)
    assert run_cli([runs["killed"] if a is None else a for a in argv]) == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]  # the command that continues it, whole
    continued = f"nexttoken jukebox train-prior {runs['killed']} --level top --resume"
    assert said.endswith(f"stopped at step 4; continue with: {continued}"), said
    monkeypatch.setattr(train_module.Windows, "__call__", real)
    assert run_cli(["jukebox", "train-prior", runs["killed"], "--level", "top", "--resume"]) == 0
    drop = ("tokens_per_s",)
    metrics = [[{k: v for k, v in r.items() if k not in drop} for r in read_metrics(runs[n] / "top")] for n in runs]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3
    a, b = (load_tensors(runs[n] / "top" / "checkpoint.safetensors")[0] for n in runs)
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k


def test_a_finished_top_prior_trains_on_when_resumed_with_more_steps_and_a_time_budget(tiny_pipeline, tmp_path):
    folder = tmp_path / "more"
    shutil.copytree(tiny_pipeline, folder, ignore=shutil.ignore_patterns("top", "samples", "report"))
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--steps", "2", *TINY_PRIOR]) == 0
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--steps", "4", "--max-minutes", "30",
                    "--resume"]) == 0
    assert read_json(folder / "top" / "summary.json")["steps"] == 4


def test_lyrics_longer_than_the_top_priors_window_are_named_in_one_warning(tiny_pipeline, tmp_path, capsys):
    folder = tmp_path / "short"
    shutil.copytree(tiny_pipeline, folder, ignore=shutil.ignore_patterns("top", "samples", "report"))
    capsys.readouterr()
    argv = ["jukebox", "train-prior", folder, "--level", "top", "--steps", "1", *TINY_PRIOR]
    assert run_cli([*argv, "--max-chars", "4"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "--max-chars" in line]
    assert len(warned) == 1 and "have lyrics longer than --max-chars 4" in warned[0], warned
    shutil.rmtree(folder / "top")
    assert run_cli(argv) == 0
    assert "--max-chars" not in capsys.readouterr().err  # the sung lines fit the default window


def test_a_run_asked_for_more_steps_and_killed_continues_to_them_when_resumed_as_it_says(tiny_pipeline, tmp_path,
                                                                                         monkeypatch, capsys):
    """The extended plan is saved: `--resume` alone (the line a Ctrl-C prints) trains on to the new step count."""
    import os
    import signal

    from nexttoken.jukebox import train as train_module

    folder = tmp_path / "more"
    shutil.copytree(tiny_pipeline, folder, ignore=shutil.ignore_patterns("top", "samples", "report"))
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--steps", "2", *TINY_PRIOR]) == 0
    real = train_module.Windows.__call__

    def interrupted_at_step_3(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, step)

    monkeypatch.setattr(train_module.Windows, "__call__", interrupted_at_step_3)
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--steps", "6", "--resume"]) == 130
    monkeypatch.setattr(train_module.Windows, "__call__", real)
    capsys.readouterr()
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--resume"]) == 0
    assert "training" in capsys.readouterr().err
    assert read_json(folder / "top" / "summary.json")["steps"] == 6
    assert [r["step"] for r in read_metrics(folder / "top") if "val_loss" in r][-1] == 6
    assert run_cli(["jukebox", "train-prior", folder, "--level", "top", "--resume"]) == 0
    assert "has finished its 6 steps" in capsys.readouterr().err


def test_encode_then_decode_gives_the_files_length_from_every_level(tiny_pipeline, tiny_audio, tmp_path):
    wav = tiny_audio / "alice" / "tune1.wav"
    assert run_cli(["jukebox", "encode", tiny_pipeline, wav, "-o", tmp_path / "c.npz"]) == 0
    codes = read_npz(tmp_path / "c.npz")
    samples = soundfile.info(str(wav)).frames
    for level, hop in (("top", 128), ("middle", 32), ("bottom", 8)):
        assert codes.codes[level].shape == (-(-samples // hop),)
        out = tmp_path / f"{level}.wav"
        assert run_cli(["jukebox", "decode", tiny_pipeline, tmp_path / "c.npz", "--level", level, "-o", out]) == 0
        assert soundfile.info(str(out)).frames == samples


def test_evaluate_and_report(tiny_pipeline, tmp_path, capsys):
    assert run_cli(["jukebox", "evaluate", tiny_pipeline, "--baselines", "", "--clips-per-artist", "1", "--seconds",
                    "0.3", "--lines", "2", "--windows", "4", "--val-clips", "4"]) == 0
    printed = capsys.readouterr().out
    for expected in ("spectral convergence", "bits per second", "artist recognised in 4 sampled clips",
                     "each level's sampled codes decoded alone", "lyrics alignment"):
        assert expected in printed
    assert (tiny_pipeline / "alignment.png").is_file()
    log = (tiny_pipeline / "log.txt").read_text()  # each measure's progress, as long work shows it
    for phase in ("reconstruction of 4 held-out clips: VQ-VAE 1/1", "held-out bits per second: prior 3/3",
                  "sampling 4 clips through every level", "real clips through every level"):
        assert f"evaluate: {phase}" in log
    assert "encode audio: segment" in log  # the codes the priors train on, encoded once by `train`
    levels = read_json(tiny_pipeline / "evaluation.json")["recognition"]["levels"]
    assert list(levels) == ["bottom", "middle", "top"] and all(v["clips"] == 4 for v in levels.values())
    stray = tiny_pipeline / "samples" / "notes"  # a folder the user put there: not a sample, not the report's
    stray.mkdir(parents=True)
    (stray / "config.json").write_text(json.dumps({"kind": "jukebox.prior"}))
    try:
        assert run_cli(["jukebox", "report", tiny_pipeline, "--out", tmp_path / "report"]) == 0
    finally:
        shutil.rmtree(stray)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<audio" in html and "reconstruction.png" in html and "lyrics alignment" in html


def test_a_second_evaluation_reuses_the_baseline_the_first_trained(tiny_pipeline, tmp_path, capsys):
    run = shutil.copytree(tiny_pipeline, tmp_path / "run")
    argv = ["jukebox", "evaluate", run, "--baselines", "bottom", "--clips-per-artist", "1", "--seconds", "0.3",
            "--lines", "1", "--windows", "2", "--val-clips", "4"]
    assert run_cli(argv) == 0
    first = read_json(run / "evaluation.json")["reconstruction"]["encodec at bottom bitrate"]
    stamp = (run / "baseline-bottom" / "checkpoint.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli(argv) == 0
    assert "nothing to train" not in capsys.readouterr().err
    assert (run / "baseline-bottom" / "checkpoint.safetensors").stat().st_mtime_ns == stamp
    assert read_json(run / "evaluation.json")["reconstruction"]["encodec at bottom bitrate"] == first


def test_the_baseline_trains_the_steps_the_vqvae_took_not_the_steps_it_was_given(tiny_pipeline, tmp_path):
    """A VQ-VAE stopped by a time budget took fewer steps than its --steps: the baseline matches what it took."""
    run = shutil.copytree(tiny_pipeline, tmp_path / "run", ignore=shutil.ignore_patterns("baseline-*"))
    config = read_json(run / "vqvae" / "config.json")
    taken = read_json(run / "vqvae" / "summary.json")["steps"]
    config["loop"]["steps"] = taken + 3  # as if --max-minutes had stopped it short
    (run / "vqvae" / "config.json").write_text(json.dumps(config))
    assert run_cli(["jukebox", "evaluate", run, "--baselines", "bottom", "--clips-per-artist", "0", "--lines", "1",
                    "--windows", "2", "--val-clips", "4"]) == 0
    assert read_json(run / "baseline-bottom" / "summary.json")["steps"] == taken
    assert read_json(run / "evaluation.json")["reconstruction"]["encodec at bottom bitrate"]["bottom"]["steps"] == taken


def test_the_preset_sizes_every_stage_and_train_prior_takes_its_vqvaes(tiny_audio, tmp_path):
    """--preset tiny is a smoke test of the whole pipeline (not a tiny VQ-VAE under CPU-sized priors), and a prior
    trained on its own later defaults to the size its VQ-VAE's preset gives that level."""
    from nexttoken.jukebox.train import RECIPES

    tiny = RECIPES["tiny"]
    run = tmp_path / "run"
    assert run_cli(["jukebox", "train", "--audio", tiny_audio, "--preset", "tiny", "--prior-steps", "3",
                    "--val-fraction", "0.34", "--out", run, "--device", "cpu"]) == 0
    assert read_json(run / "vqvae" / "summary.json")["steps"] == tiny.vq_loop.steps
    for level in ("top", "middle", "bottom"):
        saved = read_json(run / level / "config.json")
        assert saved["prior"]["n_embd"] == tiny.priors[level].n_embd and saved["loop"]["steps"] == 3
        assert saved["optim"]["lr"] == tiny.prior_optim.lr
    shutil.rmtree(run / "top")
    assert run_cli(["jukebox", "train-prior", run, "--level", "top", "--steps", "2", "--device", "cpu"]) == 0
    saved = read_json(run / "top" / "config.json")
    assert saved["prior"]["context"] == tiny.priors["top"].context and saved["loop"]["batch_size"] == 4
    assert RECIPES["gpu"].priors["top"].n_embd > RECIPES["cpu"].priors["top"].n_embd > tiny.priors["top"].n_embd


def test_the_commitment_weight_is_the_papers_unless_given(tiny_audio, tmp_path):
    from nexttoken.jukebox.pipeline import vqvae_config

    for given, weight in (([], 0.02), (["--commit-weight", "0.5"], 0.5)):
        run = tmp_path / f"run{weight}"
        assert run_cli(["jukebox", "train-vqvae", "--audio", tiny_audio, "--preset", "tiny", "--steps", "2", *given,
                        "--out", run, "--device", "cpu"]) == 0
        assert vqvae_config(run).commit_weight == weight


def test_train_resume_keeps_every_finished_stage(tiny_pipeline):
    stamps = {p: p.stat().st_mtime_ns for p in sorted(tiny_pipeline.glob("*/checkpoint.safetensors"))}
    assert len(stamps) == 4
    assert run_cli(["jukebox", "train", "--resume", tiny_pipeline]) == 0
    assert {p: p.stat().st_mtime_ns for p in sorted(tiny_pipeline.glob("*/checkpoint.safetensors"))} == stamps


def test_priors_of_codes_the_vqvae_has_trained_past_are_refused_not_resumed(tiny_pipeline, tmp_path, capsys):
    folder = shutil.copytree(tiny_pipeline, tmp_path / "run", ignore=shutil.ignore_patterns("samples", "report"))
    capsys.readouterr()
    assert run_cli(["jukebox", "train-vqvae", "--resume", folder, "--steps", "4"]) == 0
    out = capsys.readouterr().out  # the priors' scores are of the old codes: not shown as if they held
    assert f"{folder / 'top'}: learned the codes of the VQ-VAE before it trained on" in out and "bits/s" not in out
    said = {"train": f"{folder / 'top'}, {folder / 'middle'}, {folder / 'bottom'}: learned the codes",
            "train-prior": "the top prior learned the codes"}
    for argv in (["train", "--resume", folder], ["train-prior", folder, "--level", "top", "--resume", "--steps", "4"]):
        capsys.readouterr()
        assert run_cli(["jukebox", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said[argv[0]] in err[0] and "trained on to step 4; delete" in err[0], err
    assert read_json(folder / "top" / "summary.json")["steps"] == 2  # nothing trained on the new codes


def test_artist_and_genre_are_taken_as_the_folder_names_the_user_has(tiny_pipeline, tmp_path):
    """Labels are made of folder names by ``label_of`` (the folder 'Artist One' is artist_one): so are typed names."""
    out = tmp_path / "s"
    assert run_cli(["jukebox", "sample", tiny_pipeline, "--artist", "Alice", "--genre", "Unknown", "--seconds", "0.3",
                    "--stop-at", "top", "--out", out]) == 0
    labels = read_json(out / "config.json")["labels"]
    assert (labels["artist"], labels["genre"]) == ("alice", "unknown")


def test_a_pipeline_trained_on_a_relative_audio_path_reads_the_same_audio_from_anywhere(tiny_audio, tmp_path,
                                                                                         monkeypatch, capsys):
    from nexttoken.jukebox.pipeline import clips_of

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_audio, work / "audio")
    audio_folder(elsewhere / "audio")
    shutil.rmtree(elsewhere / "audio" / "bob")  # another folder by the same name: alice alone
    monkeypatch.chdir(work)
    assert run_cli(["jukebox", "train-vqvae", "--audio", "audio", "--steps", "1", "--out", work / "run",
                    "--device", "cpu", *TINY_VQVAE]) == 0
    assert read_json(work / "run" / "config.json")["data"]["audio"] == str((work / "audio").resolve())
    for folder in (elsewhere, tmp_path):
        monkeypatch.chdir(folder)
        assert "bob" in clips_of(work / "run").artists()
        capsys.readouterr()
        assert run_cli(["jukebox", "report", work / "run", "--out", tmp_path / "report", "--device", "cpu"]) == 0, \
            capsys.readouterr().err


def test_scores_on_training_clips_say_so_when_nothing_is_held_out(tiny_pipeline, tiny_audio, tmp_path, capsys):
    """One track per artist, or --val-fraction 0: the figures are on clips the model trained on, and read so."""
    run = tmp_path / "run"
    capsys.readouterr()
    assert run_cli(["jukebox", "train-vqvae", "--audio", tiny_audio, "--steps", "2", "--out", run, "--device", "cpu",
                    *TINY_VQVAE, "--val-fraction", "0"]) == 0
    printed = capsys.readouterr()
    warnings = [line for line in printed.err.splitlines() if "no track is held out" in line]
    assert len(warnings) == 1 and warnings[0].startswith("nexttoken: warning: ") and "training clips" in warnings[0]
    assert "training-clip (none held out) spectral convergence" in printed.out and "held-out" not in printed.out
    assert read_json(run / "vqvae" / "summary.json")["scored_on"] == "train"
    assert run_cli(["jukebox", "train-prior", run, "--level", "top", "--steps", "2", "--device", "cpu",
                    *TINY_PRIOR]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("no track is held out") == 1 and "bits per second are measured on training" in printed.err
    assert "bits/s on training audio (none held out)" in printed.out
    assert read_json(run / "top" / "summary.json")["scored_on"] == "train"
    for stage in ("vqvae", "top", "middle", "bottom"):  # a held-out split: the summaries as they always were
        assert "scored_on" not in read_json(tiny_pipeline / stage / "summary.json")


def test_evaluate_leaves_out_an_artist_whose_audio_is_gone_and_says_so(tiny_pipeline, tiny_audio, tmp_path, capsys):
    """The classifier cannot learn an artist with no clips left, so the clips asked of that artist would count as
    the prior's misses: the artist is left out of recognition, with a warning, and every other measure stands."""
    run = shutil.copytree(tiny_pipeline, tmp_path / "run", ignore=shutil.ignore_patterns("samples", "report"))
    audio = shutil.copytree(tiny_audio, tmp_path / "audio")
    shutil.rmtree(audio / "bob")
    config = read_json(run / "config.json")
    config["data"]["audio"] = str(audio)
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run_cli(["jukebox", "evaluate", run, "--baselines", "", "--clips-per-artist", "1", "--seconds", "0.3",
                    "--lines", "1", "--windows", "2", "--val-clips", "4"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warned = [line for line in err.splitlines() if "leaves out" in line]
    assert len(warned) == 1 and warned[0].startswith("nexttoken: warning: artist recognition leaves out bob:")
    recognition = read_json(run / "evaluation.json")["recognition"]
    assert "bob" not in recognition["per_artist"] and "alice" in recognition["per_artist"]
