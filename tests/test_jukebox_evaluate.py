"""Reconstruction and codebook metrics, per-level evaluation of a codec, and the EnCodec-architecture baseline."""

import math

import pytest
import torch

from nexttoken.jukebox.evaluate import (EncodecBaseline, EncodecBaselineConfig, codebook_usage, evaluate_codec,
                                        log_mel_l1, matching_baseline, perplexity, si_sdr, spectral_convergence_db,
                                        stft_distance)
from nexttoken.jukebox.vqvae import PRESETS, VQVAE, VQVAEConfig, vqvae_loss


pytestmark = pytest.mark.usefixtures("one_thread")

SR = 8000
TINY = dict(sample_rate=SR, widths=(8, 8, 8), depths=(1, 1, 1), codebook_size=16, code_dim=4)
METRICS = {"spectral_convergence_db", "stft_distance", "log_mel_l1", "si_sdr_db", "usage", "perplexity",
           "bits_per_second"}


def music(batch=2, seconds=0.5):
    t = torch.arange(int(seconds * SR)) / SR
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    return (chord * torch.exp(-3 * t)).repeat(batch, 1) * torch.linspace(0.5, 1.0, batch)[:, None]


def test_every_metric_is_perfect_on_a_copy_and_worsens_with_noise():
    ref = music()
    noise = torch.randn_like(ref)
    assert (spectral_convergence_db(ref, ref, SR) < -100).all()
    assert stft_distance(ref, ref, SR).max() < 1e-5 and log_mel_l1(ref, ref, SR).max() == 0
    assert (si_sdr(ref, ref) > 80).all()
    worse = [ref + level * noise for level in (0.01, 0.1, 0.5)]
    for metric, better_is in ((lambda e: spectral_convergence_db(e, ref, SR), "lower"),
                              (lambda e: stft_distance(e, ref, SR), "lower"),
                              (lambda e: log_mel_l1(e, ref, SR), "lower"),
                              (lambda e: si_sdr(e, ref), "higher")):
        values = [float(metric(e).mean()) for e in worse]
        assert values == sorted(values, reverse=better_is == "higher")
    # SI-SDR ignores the scale of the estimate; spectral convergence does not
    assert torch.allclose(si_sdr(0.5 * worse[1], ref), si_sdr(worse[1], ref), atol=1e-4)
    assert spectral_convergence_db(0.5 * ref, ref, SR).mean() == pytest.approx(20 * math.log10(0.5), abs=0.01)


def test_the_metrics_are_fp32_under_bf16_autocast():
    """A training loop evaluates under its autocast; the log-mel product in bf16 would round the bands' energies."""
    ref = music()
    estimate = ref + 0.01 * torch.randn_like(ref)
    expected = {name: metric(estimate, ref, SR) for name, metric in
                (("log_mel_l1", log_mel_l1), ("stft_distance", stft_distance), ("sc", spectral_convergence_db))}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, metric in (("log_mel_l1", log_mel_l1), ("stft_distance", stft_distance),
                             ("sc", spectral_convergence_db)):
            value = metric(estimate, ref, SR)
            assert value.dtype == torch.float32 and torch.allclose(value, expected[name], rtol=1e-5), name


def test_usage_and_perplexity_count_codes_per_codebook():
    codes = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]])  # (N=2, T=4)
    assert codebook_usage(codes, 8) == 0.5 and perplexity(codes, 8) == pytest.approx(4.0)
    rvq = torch.stack([codes, torch.zeros_like(codes)], dim=1)  # (N, Q=2, T): the second stage uses one code
    assert codebook_usage(rvq, 8) == pytest.approx((4 + 1) / 16) and perplexity(rvq, 8) == pytest.approx(2.5)


def test_evaluate_codec_reports_every_metric_per_level_and_leaves_the_codebooks_alone():
    model = VQVAE(VQVAEConfig(**TINY))
    model(music())  # initialise the codebooks
    before = [cb.embed.clone() for cb in model.codebooks]
    result = evaluate_codec(model, music(batch=3), batch_size=2)
    assert list(result) == ["bottom", "middle", "top"]
    for level, metrics in result.items():
        assert set(metrics) == METRICS and all(math.isfinite(v) for v in metrics.values())
        assert 0 < metrics["usage"] <= 1 and 1 <= metrics["perplexity"] <= 16
    assert result["bottom"]["bits_per_second"] == 4 * result["top"]["bits_per_second"] * 4
    assert all(torch.equal(b, cb.embed) for b, cb in zip(before, model.codebooks)) and model.training


def test_the_baseline_matches_a_level_bitrate_and_trains_with_the_same_loss():
    vq = VQVAEConfig(**TINY)
    cfg = matching_baseline(vq, 0, codebook_size=16, code_dim=8, num_filters=4, ratios=(4, 4))  # hop 16
    assert cfg.num_quantizers == 2 and cfg.bits_per_second() == vq.bits_per_second(0)  # 2 x 500/s x 4 bits
    assert matching_baseline(PRESETS["gpu"], 0).bits_per_second() == pytest.approx(
        PRESETS["gpu"].bits_per_second(0), rel=0.02)
    torch.manual_seed(0)
    model = EncodecBaseline(cfg)
    audio = music(batch=1)[:, :3000]  # not a multiple of the hop
    out = model(audio)
    assert out.recons[0].shape == (1, 3000) and out.levels[0].codes.shape == (1, 2, math.ceil(3000 / 16))
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, logs = vqvae_loss(model, {"audio": audio})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) >= {"encodec_l2", "encodec_spectral", "encodec_usage"}
    assert min(losses[-3:]) < 0.8 * losses[0]
    # the straight-through gradient reached transformers' encoder through our residual VQ
    assert all(not torch.equal(b, p) for b, p in zip(encoder_before, model.encoder.parameters()))
    model.eval()
    (codes,) = model.encode(audio)
    assert torch.equal(codes, model(audio).levels[0].codes)
    assert torch.allclose(model.decode(codes)[:, :3000], model(audio).recons[0], atol=1e-5)
    assert set(evaluate_codec(model, audio)["encodec"]) == METRICS


def test_baseline_config_refuses_what_residual_vq_cannot_do():
    with pytest.raises(ValueError):
        EncodecBaselineConfig(codebook_size=1000)
    with pytest.raises(ValueError):
        EncodecBaselineConfig(num_quantizers=0)
