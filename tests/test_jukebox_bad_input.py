"""Every jukebox command given bad input (unreadable audio, a run folder of another kind, out-of-range flags, a length
the priors cannot cover, an unknown level or artist): exit code 2, one line on stderr, no traceback, and no folder
left behind (calls of ``nexttoken.cli.main`` in this process)."""

import json

import pytest

from jukebox_fixtures import TINY_VQVAE, jukebox_cache, run_cli, tiny_audio, tiny_pipeline  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_thread")


def refused(argv, capsys, match: str) -> None:
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    # the warnings about skipped files and the progress lines of the work done before are not the error
    lines = [line for line in err.strip().splitlines()
             if not line.startswith("nexttoken: warning") and " elapsed" not in line]
    assert len(lines) == 1 and match in lines[0], err


@pytest.mark.parametrize("argv, match", [
    (["train-vqvae", "--steps", "0"], "--steps must be >= 1"),
    (["train-vqvae", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train-vqvae", "--lr", "nan"], "expected a finite number"),
    (["train-vqvae", "--val-fraction", "1"], "--val-fraction must be >= 0 and < 1"),
    (["train-vqvae", "--piece-seconds", "0"], "--piece-seconds must be > 0"),
    (["train", "--prior-steps", "-3"], "--prior-steps must be >= 1"),
    (["prepare", "--lyrics-lines", "-1"], "--lyrics-lines must be >= 0"),
    (["prepare", "--voices", "low,alto"], "--voices takes distinct names among low, high, espeak, not low,alto"),
    (["train-vqvae", "--voices", "low,espeak"], "--voices espeak needs espeak-ng on the PATH"),
    (["prepare", "--audio", ".", "--pieces", "3"], "--pieces applies to rendered notes"),  # silently unused before
    (["train-vqvae", "--audio", ".", "--soundfont", "synth"], "--soundfont applies to rendered notes"),
])
def test_out_of_range_flags_are_refused_before_any_folder(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))  # no espeak-ng, wherever it is installed
    refused(["jukebox", *argv, "--out", tmp_path / "run"] if argv[0] != "prepare" else ["jukebox", *argv], capsys,
            match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, match", [
    (["train-prior", "{run}", "--level", "side"], "invalid choice: 'side'"),
    (["decode", "{run}", "{run}/codes.npz", "--level", "lowest"], "invalid choice: 'lowest'"),
    (["train-prior", "{run}", "--level", "top", "--n-embd", "0"], "--n-embd must be >= 8"),
    (["train-prior", "{run}", "--level", "top", "--n-embd", "30", "--n-head", "4"], "must be a multiple of --n-head"),
    (["train-prior", "{run}", "--level", "middle", "--context", "30"], "must be a multiple of 4"),
    (["train-prior", "{run}", "--level", "top"], "already holds a prior; pass --resume"),
    (["sample", "{run}", "--seconds", "0"], "--seconds must be > 0"),
    (["sample", "{run}", "--seconds", "1000"], "at most"),
    (["sample", "{run}", "--seconds", "0.00001"], "--seconds 1e-05: less than one sample at this run's"),
    (["sample", "{run}", "--temperature", "-1"], "--temperature must be >= 0"),
    (["sample", "{run}", "--overlap", "1"], "--overlap must be >= 0 and < 1"),
    (["sample", "{run}", "--overlap", "0.99"], "context of the middle prior as the prompt, leaving no code to "
                                               "sample; at most 0.875 works"),
    (["sample", "{run}", "--overlap", "0.99", "--stop-at", "top"], "at most 0.96875 works"),
    (["sample", "{run}", "--artist", "nobody"], "--artist nobody: not one of the run's artists"),
    (["sample", "{run}", "--genre", "polka"], "--genre polka: not one of the run's genres"),
    (["sample", "{run}", "--artist", "Alice Cooper"], "--artist Alice Cooper: not one of the run's artists"),
    (["sample", "{run}", "--lyrics", "la " * 33], "--lyrics: 99 characters; this run's top prior reads at most 96"),
    (["sample", "{run}", "--prime", "{run}/config.json"], "unreadable audio"),
    (["sample", "{run}", "--prime", "{run}/nope.wav"], "nope.wav: no such file"),
    (["sample", "{run}", "--prime-seconds", "0.3"], "--prime-seconds is the length of --prime's recording kept"),
    (["sample", "{run}", "--seconds", "1", "--total-seconds", "0.5"], "--total-seconds 0.5: between the 1 s sampled"),
    (["encode", "{run}", "{run}/in.wav", "-o", "{run}/in.wav"], "this writes a .npz file; give a name ending in .npz"),
    (["decode", "{run}", "{run}/codes.npz", "-o", "{run}/codes.npz"], "this writes a .wav file"),
    (["sample", "{run}", "--resume", "{run}/samples/none", "--artist", "bob"], "leave out --artist"),
    (["sample", "{run}/vqvae"], "jukebox.vqvae run, not a jukebox.pipeline run"),
    (["sample", "--seconds", "1"], "give the pipeline folder RUN to sample from"),
    (["sample", "--resume", "{run}/top"], "jukebox.prior run, not a jukebox.sample run"),
    (["train", "--resume", "{run}", "--prior-steps", "8"], "own settings; leave out --prior-steps (to train a prior "
                                                          "further: nexttoken jukebox train-prior RUN --level L"),
    (["encode", "{run}", "{run}/config.json"], "unreadable audio"),
    (["decode", "{run}", "{run}/config.json"], "not a codes file"),
    (["evaluate", "{run}", "--baselines", "side"], "--baselines side"),
    (["report", "{run}/top"], "jukebox.prior run, not a jukebox.pipeline run"),
])
def test_bad_requests_to_a_trained_pipeline_are_one_line(argv, match, tiny_pipeline, tmp_path, capsys):
    before = sorted(p.name for p in tiny_pipeline.rglob("*"))
    out = tmp_path / "s"
    argv = [a.replace("{run}", str(tiny_pipeline)) for a in argv]
    extra = ["--out", out] if argv[0] == "sample" and "--resume" not in argv else []
    refused(["jukebox", *argv, *extra], capsys, match)
    assert not out.exists()
    assert sorted(p.name for p in tiny_pipeline.rglob("*")) == before


def test_a_folder_of_unreadable_audio_is_one_error_and_leaves_no_folder(tmp_path, capsys, jukebox_cache):  # noqa: F811
    (tmp_path / "audio" / "x").mkdir(parents=True)
    (tmp_path / "audio" / "x" / "a.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (tmp_path / "audio" / "x" / "b.flac").write_bytes(b"")
    refused(["jukebox", "train-vqvae", "--audio", tmp_path / "audio", "--out", tmp_path / "run", *TINY_VQVAE],
            capsys, "none of the 2 audio files is usable")
    assert not (tmp_path / "run").exists()
    refused(["jukebox", "train", "--audio", tmp_path / "missing", "--out", tmp_path / "run"], capsys,
            "not a folder of audio files or a CSV")
    assert not (tmp_path / "run").exists()


def test_a_folder_of_another_kind_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "grok").mkdir()
    (tmp_path / "grok" / "config.json").write_text(json.dumps({"kind": "grok.train"}))
    for argv in (["sample", tmp_path / "grok"], ["train-prior", tmp_path / "grok", "--level", "top"],
                 ["train", "--resume", tmp_path / "grok"], ["encode", tmp_path / "grok", tmp_path / "x.wav"]):
        refused(["jukebox", *argv], capsys, "grok.train run, not a jukebox.pipeline run")
    assert sorted(p.name for p in (tmp_path / "grok").iterdir()) == ["config.json"]


def test_a_second_training_into_a_pipeline_folder_is_refused(tiny_pipeline, tiny_audio, capsys):  # noqa: F811
    refused(["jukebox", "train-vqvae", "--audio", tiny_audio, "--out", tiny_pipeline, *TINY_VQVAE], capsys,
            "already holds a run")
    assert (tiny_pipeline / "vqvae" / "summary.json").is_file()


def test_a_malformed_codes_file_is_one_line(tiny_pipeline, tmp_path, capsys):  # noqa: F811
    import numpy as np

    good = dict(top=np.zeros(4, np.int32), hops=np.array([8, 32, 128]), sample_rate=np.array(8000),
                samples=np.array(512))
    cases = {"hops.npz": {**good, "hops": np.array(8)}, "rate.npz": {**good, "sample_rate": np.array([8000, 8000])},
             "text.npz": {**good, "top": np.array(["a", "b"])}, "cube.npz": {**good, "top": np.zeros((1, 2, 4), int)},
             "empty.npz": {**good, "top": np.zeros(0, int)}, "no-rows.npz": {**good, "top": np.zeros((0, 4), int)}}
    np.save(tmp_path / "one.npy", good["top"])
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
    np.savez_compressed(tmp_path / "whole.npz", **good)
    whole = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    flipped = bytearray(whole)
    flipped[len(whole) // 3] ^= 0xFF  # one bad byte inside an array
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    for name in ["one.npy", "cut.npz", "crc.npz", *cases]:
        refused(["jukebox", "decode", tiny_pipeline, tmp_path / name, "--level", "top", "-o", tmp_path / "x.wav"],
                capsys, "not a codes file of `nexttoken jukebox encode`")
    assert not (tmp_path / "x.wav").exists()
    np.savez(tmp_path / "good.npz", **good)
    assert run_cli(["jukebox", "decode", tiny_pipeline, tmp_path / "good.npz", "--level", "top", "-o",
                    tmp_path / "x.wav"]) == 0


def test_a_pipeline_of_another_sample_rate_is_not_compared(tiny_pipeline, tmp_path, capsys):  # noqa: F811
    """Its VQ-VAE would be scored on audio of a rate it was never made for: refused, not printed as a result."""
    import json
    import shutil

    other = tmp_path / "other"
    (other / "vqvae").mkdir(parents=True)
    shutil.copy(tiny_pipeline / "config.json", other / "config.json")
    config = json.loads((tiny_pipeline / "vqvae" / "config.json").read_text())
    config["vqvae"]["sample_rate"] *= 2
    (other / "vqvae" / "config.json").write_text(json.dumps(config))
    refused(["jukebox", "evaluate", tiny_pipeline, "--compare", other], capsys, "compare pipelines of one sample rate")


def test_a_hand_edited_prior_config_is_refused_in_one_line(tiny_pipeline, tmp_path, capsys):  # noqa: F811
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_pipeline, copy)
    config = json.loads((copy / "top" / "config.json").read_text())
    config["prior"]["n_head"] = config["prior"]["n_embd"] + 1
    (copy / "top" / "config.json").write_text(json.dumps(config))
    refused(["jukebox", "sample", copy, "--seconds", "0.5", "--device", "cpu"], capsys, "must be a multiple of")


def test_a_prime_shorter_than_one_top_level_code_is_refused_by_the_flag_given(
        tiny_pipeline, tmp_path, capsys):  # noqa: F811
    import numpy as np
    import soundfile

    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(3, dtype=np.float32), 16000)
    refused(["jukebox", "sample", tiny_pipeline, "--prime", short, "--out", tmp_path / "s"], capsys,
            f"--prime {short} lasts 0.00025 s: less than one top-level code")  # 2 samples at the run's 8 kHz
    assert not (tmp_path / "s").exists()
