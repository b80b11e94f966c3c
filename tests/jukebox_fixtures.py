"""A tiny Jukebox pipeline for the jukebox tests: two synthesized artists and four sung lines at 8 kHz, the tiny
VQ-VAE preset and three priors a few thousand parameters each, trained for a few steps through the CLI."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nexttoken.cli import main
from nexttoken.jukebox.audio import write_wav
from nexttoken.midi.synth import synthesize

RATE = 8000
TINY_PRIOR = ["--context", "32", "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--lyrics-width", "8",
              "--lyrics-layers", "1", "--cross-every", "1", "--conditioner-width", "8", "--batch-size", "4",
              "--eval-every", "2", "--ckpt-every", "2", "--warmup-steps", "1"]
TINY_VQVAE = ["--preset", "tiny", "--batch-size", "2", "--eval-every", "2", "--ckpt-every", "2", "--val-clips", "4",
              "--lyrics-lines", "4", "--val-fraction", "0.34", "--warmup-steps", "1"]


def audio_folder(root: Path) -> Path:
    """Two artists (a piano and a string ensemble) with three 1.2-second tunes each."""
    rng = np.random.default_rng(0)
    for artist, program in (("alice", 0), ("bob", 48)):
        for k in range(3):
            n = 8
            onsets = np.arange(n) * 0.15
            audio = synthesize(onsets, np.full(n, 0.14), rng.integers(55, 76, n), np.full(n, 90), np.full(n, program),
                               np.zeros(n, dtype=bool), sample_rate=RATE)
            write_wav(root / artist / f"tune{k}.wav", audio, RATE)
    return root


def run_cli(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def train_tiny(folder: Path, audio: Path, prior_steps: int = 2) -> Path:
    assert run_cli(["jukebox", "train-vqvae", "--audio", audio, "--steps", "2", "--out", folder, "--device", "cpu",
                    *TINY_VQVAE]) == 0
    for level in ("top", "middle", "bottom"):
        assert run_cli(["jukebox", "train-prior", folder, "--level", level, "--steps", prior_steps, "--device", "cpu",
                        *TINY_PRIOR]) == 0
    return folder


@pytest.fixture(scope="session")
def jukebox_cache(tmp_path_factory):
    """Caches of audio and sung lines in a folder of the test session, not the user's."""
    saved = os.environ.get("NEXTTOKEN_CACHE")
    os.environ["NEXTTOKEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("NEXTTOKEN_CACHE", None)
    else:
        os.environ["NEXTTOKEN_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_audio(tmp_path_factory, jukebox_cache) -> Path:
    return audio_folder(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_audio) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and a busy machine cannot make it wait
    try:
        return train_tiny(tmp_path_factory.mktemp("pipeline") / "run", tiny_audio)
    finally:
        torch.set_num_threads(threads)
