"""Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) on your machine: raw audio compressed into three
levels of discrete codes, a top-level prior conditioned on artist, genre, timing and lyrics, upsampler priors for the
two levels below, and ancestral sampling back to a waveform.

Data: audio.py (your audio as labelled clips), data.py (the embedded default: the music21 corpus rendered to audio and
lyrics.py's sung lines), codes.py (every track encoded once). Models: vqvae.py (the VQ-VAE and its loss, with
spectral.py's STFTs), prior.py (the priors' conditioning around the core GPT). Stages: train.py, pipeline.py (one
folder for every stage), sample.py. Measures: evaluate.py (reconstruction, the EnCodec-architecture baseline),
fidelity.py (artist recognition), alignment.py (lyrics), evaluate_run.py (all of them for a folder). demo.py and
figures.py draw them; cli.py is `nexttoken jukebox`.
"""

HELP = "Jukebox: raw audio as three levels of codes, conditioned priors with lyrics, sampling back to sound"
