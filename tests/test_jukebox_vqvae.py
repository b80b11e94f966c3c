"""The VQ-VAE: shapes and hops of every level, the straight-through gradient, the EMA codebook update and dead-code
restarts on hand-made cases, the statistics shared under DDP, and a short training that lowers the spectral loss."""

import math
import multiprocessing

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist

from nexttoken.jukebox.spectral import stft_loss
from nexttoken.jukebox.vqvae import PRESETS, VQVAE, Codebook, VQVAEConfig, vqvae_loss
from nexttoken.midi.synth import synthesize


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(sample_rate=8000, clip_seconds=0.128, widths=(8, 8, 8), depths=(1, 1, 1), codebook_size=16, code_dim=4)


def codebook(vectors, counts=None, decay=0.5, threshold=1.0, restarts=True):
    """A 1-D codebook in a known state: code k sits at vectors[k] with EMA count counts[k]."""
    cb = Codebook(len(vectors), 1, decay, threshold, restarts)
    cb.embed.copy_(torch.tensor(vectors, dtype=torch.float32)[:, None])
    cb.count.copy_(torch.tensor(counts or [1.0] * len(vectors)))
    cb.total.copy_(cb.embed * cb.count[:, None])
    cb.initialised.fill_(True)
    return cb


def column(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1)  # (B=1, D=1, T)


def test_every_level_has_its_hop_length_and_reconstructs_the_input_length():
    cfg = VQVAEConfig(**TINY)
    model = VQVAE(cfg)
    audio = torch.randn(2, 1024)
    codes = model.encode(audio)
    assert [c.shape for c in codes] == [(2, 128), (2, 32), (2, 8)]
    assert all(c.dtype == torch.int64 and 0 <= c.min() and c.max() < 16 for c in codes)
    assert [model.decode(c, level).shape for level, c in enumerate(codes)] == [(2, 1024)] * 3
    out = model(torch.randn(2, 1000))  # not a multiple of any hop: padded to whole codes, cropped back
    assert [r.shape for r in out.recons] == [(2, 1000)] * 3
    assert [q.codes.shape for q in out.levels] == [(2, 125), (2, 32), (2, 8)]
    two = VQVAE(VQVAEConfig(**{**TINY, "hops": (4, 16), "widths": (8, 8), "depths": (1, 1)}))
    assert two.config.levels == ("bottom", "top") and [c.shape[1] for c in two.encode(audio)] == [256, 64]
    with pytest.raises(ValueError, match="powers of two"):
        VQVAEConfig(hops=(8, 24, 128))


def test_encode_then_decode_equals_the_forward_reconstruction_in_eval_mode():
    model = VQVAE(VQVAEConfig(**TINY))
    audio = torch.randn(2, 1024)
    model(audio)  # initialise the codebooks from encoder outputs
    model.eval()
    with torch.no_grad():
        out = model(audio)
    for level, codes in enumerate(model.encode(audio)):
        assert torch.equal(codes, out.levels[level].codes)
        assert torch.allclose(model.decode(codes, level), out.recons[level], atol=1e-6)


def test_the_gradient_goes_straight_through_the_codebook_to_the_encoder():
    cb = codebook([0.0, 10.0])
    z = column([1.0, 2.0, 9.0]).requires_grad_()
    q = cb(z)
    assert q.z_q.detach().flatten().tolist() == [0.0, 0.0, 10.0]
    upstream = torch.tensor([[[3.0, -1.0, 2.0]]])
    (q.z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # the identity: what reaches z_q reaches z
    z.grad = None
    codebook([0.0, 10.0])(z).commit.backward()  # (1 + 4 + 1) / 3 -> d/dz = 2 (z - e) / 3, toward the code
    assert torch.allclose(z.grad.flatten(), torch.tensor([2.0, 4.0, -2.0]) / 3)

    model = VQVAE(VQVAEConfig(**TINY))
    model.train()
    out = model(torch.randn(2, 512))
    out.recons[0].square().sum().backward()
    first_conv = model.encoders[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.encoders[1][0].weight.grad is None  # levels are independent
    assert not any(b.requires_grad for b in model.codebooks[0].buffers())


def test_the_ema_update_moves_codes_to_the_decayed_mean_of_their_vectors():
    cb = codebook([0.0, 10.0], decay=0.5)
    q = cb(column([1.0, 2.0, 9.0]))
    assert q.codes.tolist() == [[0, 0, 1]]
    # count: 0.5 * 1 + 0.5 * 2 = 1.5 and 0.5 * 1 + 0.5 * 1 = 1; sum: 0.5 * 0 + 0.5 * 3 and 0.5 * 10 + 0.5 * 9
    assert cb.count.tolist() == [1.5, 1.0]
    assert cb.total.flatten().tolist() == [1.5, 9.5]
    assert cb.embed.flatten().tolist() == [1.0, 9.5]
    assert q.usage.item() == 1.0 and q.perplexity.item() == pytest.approx(math.exp(-(2 / 3) * math.log(2 / 3)
                                                                                   - (1 / 3) * math.log(1 / 3)))
    cb.eval()
    cb(column([50.0]))  # evaluation never changes the codebook
    assert cb.embed.flatten().tolist() == [1.0, 9.5]


def test_a_code_whose_count_falls_below_the_threshold_restarts_at_a_vector_of_the_batch():
    batch = [1.0, 2.0, 9.0]
    cb = codebook([0.0, 10.0, 100.0], decay=0.5)
    q = cb(column(batch))
    assert q.restarted.item() == 1  # code 2 took nothing: its count fell to 0.5
    assert cb.embed[2].item() in batch
    assert cb.count[2].item() == 1.0 and cb.total[2].item() == cb.embed[2].item()
    assert cb.embed[:2].flatten().tolist() == [1.0, 9.5]  # the live codes follow the EMA as before

    frozen = codebook([0.0, 10.0, 100.0], decay=0.5, restarts=False)
    assert frozen(column(batch)).restarted.item() == 0
    assert frozen.embed.flatten().tolist() == [1.0, 9.5, 100.0] and frozen.count[2].item() == 0.5


def test_without_restarts_a_code_unused_for_thousands_of_steps_stays_where_it_died():
    cb = codebook([0.0, 10.0, 5.0], decay=0.99, restarts=False)
    for _ in range(4000):  # 0.99^4000: its count decays below float32's smallest normal number
        cb(column([1.0, 9.0]))
    assert cb.embed[2].item() == pytest.approx(5.0, abs=1e-4)  # not slid towards 0, where quiet audio would pick it
    assert cb.embed[:2].flatten().tolist() == pytest.approx([1.0, 9.0], abs=1e-3)


def test_codes_start_at_encoder_outputs():
    a, b = torch.tensor([3.7, -1.2]), torch.tensor([0.4, 5.0])
    z = torch.stack([a, b, b, a, b, a], dim=1)[None]  # (1, D=2, T=6): only two distinct vectors
    cb = Codebook(8, 2, restarts=False)
    assert not cb.initialised
    cb(z)
    # Every code started at a or b; the code that took the a's (b's) stays at their mean, a (b), and the others
    # took nothing, so their EMA sum and count decay together: the codebook holds only a and b.
    assert cb.initialised and all(torch.allclose(e, a) or torch.allclose(e, b) for e in cb.embed)


def test_restarts_keep_the_codebook_alive_when_the_data_moves():
    torch.manual_seed(0)
    usage = {}
    for restarts in (True, False):
        cb = Codebook(32, 2, decay=0.9, restarts=restarts)
        cb(torch.randn(4, 2, 64))  # initialised on one distribution ...
        for _ in range(30):  # ... then fed another, far from most codes
            q = cb(5 + 0.5 * torch.randn(4, 2, 64))
        usage[restarts] = q.usage.item()
    assert usage[True] > 0.9 and usage[False] < 0.3


def _ddp_codebooks(rank, path, data, out):
    torch_dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each process draws different restart points: rank 0's must be used by all
    restarting = codebook([0.0, 1.0, 2.0, 3.0, 100.0], decay=0.8)  # the code at 100 is dead from the start
    plain = codebook([0.0, 1.0, 2.0, 3.0], decay=0.8, restarts=False)
    restarted = 0
    for batch in data:
        restarted += restarting(batch[rank]).restarted.item()
        plain(batch[rank])
    # plain lists: a tensor in a queue travels as a shared file descriptor that dies with this process
    out.put((rank, restarting.embed.tolist(), plain.embed.tolist(), plain.count.tolist(), restarted))
    torch_dist.destroy_process_group()


def test_under_ddp_every_process_keeps_the_codebook_of_the_global_batch(tmp_path):
    torch.manual_seed(0)
    data = [torch.rand(2, 1, 1, 6) * 4 for _ in range(3)]  # per step, per rank: (B=1, D=1, T=6) in [0, 4)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_codebooks, args=(r, tmp_path / "init", data, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: [torch.tensor(x) for x in r[1:]] for r in (out.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    (restarting0, plain0, count0, restarted), (restarting1, plain1, _, _) = results[0], results[1]
    assert restarted.item() >= 1 and torch.equal(restarting0, restarting1)  # the same restarts everywhere
    single = codebook([0.0, 1.0, 2.0, 3.0], decay=0.8, restarts=False)
    for batch in data:
        single(torch.cat([batch[0], batch[1]], dim=2))  # the global batch in one process
    assert torch.equal(plain0, plain1) and torch.allclose(plain0, single.embed, atol=1e-6)
    assert torch.allclose(count0, single.count, atol=1e-6)


def test_a_short_training_on_a_tiny_clip_lowers_the_spectral_loss():
    torch.manual_seed(0)
    cfg = VQVAEConfig(**{**TINY, "clip_seconds": 0.5})
    t = np.arange(8) * 0.06
    melody = synthesize(t, np.full(8, 0.1), [60, 64, 67, 72, 67, 64, 60, 55], np.full(8, 90), np.zeros(8),
                        np.zeros(8, dtype=bool), sample_rate=cfg.sample_rate)
    audio = torch.from_numpy(melody[: cfg.clip_samples])[None]  # (1, 4096)
    model = VQVAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss, logs = vqvae_loss(model, {"audio": audio})
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or logs
    assert {"bottom_l2", "middle_spectral", "top_commit", "bottom_usage", "top_perplexity"} <= set(logs)
    assert math.isfinite(loss.item())
    model.eval()
    with torch.no_grad():
        recon = model(audio).recons[0]
    assert stft_loss(recon, audio, cfg.sample_rate) < 0.75 * first["bottom_spectral"]


def test_presets_match_their_descriptions():
    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    assert cpu.sample_rate == 16000 and cpu.clip_samples % 128 == 0
    assert gpu.sample_rate == 22050 and (gpu.codebook_size, gpu.code_dim) == (2048, 64)
    assert gpu.widths == (64, 32, 32) and gpu.depths == (8, 4, 4) and gpu.hops == (8, 32, 128)
    assert cpu.bits_per_second(0) == 16000 / 8 * 8


def test_a_training_step_of_the_codebook_reads_nothing_back_from_the_device():
    """Tensors without data raise on any op whose result the host must read (bool(), .item(), bincount, indexing by a
    mask): the codebook's step, restarts included, stays on the device, as a GPU run needs (reads wait for the GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cb = Codebook(16, 4)
        cb._ready = True  # as after its first step, which reads the initialised flag once
        q = cb(torch.randn(2, 4, 8))
        assert q.codes.shape == (2, 8) and q.restarted.shape == ()


def test_a_codebook_loaded_from_an_uninitialised_state_initialises_again():
    cb = Codebook(4, 1)
    cb(column([1.0, 2.0, 3.0, 4.0]))
    cb.load_state_dict(Codebook(4, 1).state_dict())  # the flag it remembered is forgotten with the state it read
    cb(column([10.0, 10.0, 10.0, 10.0]))
    assert bool(cb.initialised) and torch.allclose(cb.embed, torch.tensor(10.0), atol=1.0)
