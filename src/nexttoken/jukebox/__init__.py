"""Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) on your machine: raw audio as discrete codes.

audio.py (your audio as labelled clips), vqvae.py (the three-level VQ-VAE and its loss), spectral.py (the STFTs of
its spectral loss), evaluate.py (reconstruction and codebook metrics, the EnCodec-architecture baseline), lyrics.py
(a built-in singing voice and its aligned lyrics).
"""
