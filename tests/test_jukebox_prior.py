"""The priors: an upsampler's own codes stay causal while it sees the level above whole; windowed sampling with the
KV cache and every conditioning input equals recomputation; the windows and rows the priors learn from."""

import pytest
import torch

from nexttoken.jukebox.prior import Prior, PriorConfig, chars_batch, position_seconds, window_tokens
from nexttoken.jukebox.sample import (JUKEBOX_SAMPLING, plan_windows, sample_level, top_conditioning,
                                      upsampler_conditioning)

LABELS = dict(codebook_size=16, artists=["a", "b"], genres=["g"], sample_rate=1000, max_seconds=10.0)


def top_prior(**kw) -> Prior:
    cfg = PriorConfig(level="top", context=12, n_layer=2, n_head=2, n_embd=16, lyrics_width=8, lyrics_layers=1,
                      cross_every=1, hop=8, **LABELS, **kw)
    return Prior(cfg.validate()).eval()


def upsampler() -> Prior:
    cfg = PriorConfig(level="middle", context=16, n_layer=2, n_head=2, n_embd=16, conditioner_width=8, ratio=4, hop=2,
                      **LABELS)
    prior = Prior(cfg.validate()).eval()
    torch.nn.init.normal_(prior.conditioner.out.weight, std=0.5)  # it starts at zero: make the conditioning count
    return prior


def randomise_timing(prior: Prior) -> None:
    for table in (prior.timing.total, prior.timing.time, prior.timing.fraction):
        torch.nn.init.normal_(table.weight, std=0.5)


def test_the_upsamplers_own_codes_stay_causal_while_the_level_above_is_seen_whole():
    torch.manual_seed(0)
    prior = upsampler()
    codes = torch.randint(16, (1, 16))
    idx, _ = window_tokens(codes, prior.cfg.start_token)
    upper = torch.randint(16, (1, 4))
    cond = torch.tensor([[0, 2]])
    with torch.no_grad():
        logits, _ = prior(idx, cond=cond, upper=upper)
        t = 7
        later = idx.clone()
        later[:, t + 1 :] = torch.randint(16, (1, 16 - t - 1))  # the level's own codes after position t
        changed, _ = prior(later, cond=cond, upper=upper)
        assert torch.allclose(logits[:, : t + 1], changed[:, : t + 1], atol=1e-6)
        assert not torch.allclose(logits[:, t + 1 :], changed[:, t + 1 :])
        above = upper.clone()
        above[:, 3] = (upper[:, 3] + 1) % 16  # the level above's last code
        seen, _ = prior(idx, cond=cond, upper=above)
    assert not torch.allclose(logits[:, :12], seen[:, :12])  # early positions see it: the level above is known whole


def test_the_conditioner_stretches_the_level_above_by_the_hop_ratio():
    prior = upsampler()
    assert prior.additive(upper=torch.randint(16, (3, 5))).shape == (3, 20, 16)


@pytest.mark.parametrize("level", ["top", "middle"])
def test_windowed_cached_sampling_with_every_conditioning_input_equals_recomputation(level):
    """Three windows past the context, with prefix tokens, the additive input (timing or the level above) and the
    lyrics memory: cached decoding picks exactly the codes full recomputation picks."""
    torch.manual_seed(1)
    cond = torch.tensor([[0, 2], [1, 2]])
    if level == "top":
        prior = top_prior()
        randomise_timing(prior)
        conditioning = top_conditioning(prior, cond, 4.0, ["daki mo", "lesa"])
    else:
        prior = upsampler()
        conditioning = upsampler_conditioning(prior, cond, torch.randint(16, (2, 10)))
    greedy = type(JUKEBOX_SAMPLING)(temperature=0.0)
    runs = [sample_level(prior, torch.zeros(2, 0, dtype=torch.long), 40, conditioning, greedy,
                         torch.Generator().manual_seed(0), keep=6, use_cache=cache) for cache in (True, False)]
    assert runs[0].shape == (2, 40) and torch.equal(runs[0], runs[1])
    assert runs[0].max() < 16  # the start token is never sampled


@pytest.mark.parametrize("level", ["top", "middle"])
def test_a_prior_and_its_conditioning_make_no_tensor_off_the_models_device(level):
    """On the meta device a tensor made without ``device=`` (on the CPU) fails where it meets the model's, as it
    would on a GPU."""
    meta = torch.device("meta")
    prior = (top_prior() if level == "top" else upsampler()).to(meta)
    T = prior.cfg.context
    idx, targets = window_tokens(torch.randint(16, (2, T)), prior.cfg.start_token)
    inputs = {"cond": torch.tensor([[0, 2], [1, 2]], device=meta)}
    if level == "top":
        inputs.update(seconds=position_seconds(torch.zeros(2, device=meta), T, 8, 1000),
                      total=torch.ones(2, device=meta), chars=chars_batch(["daki", "mo"], 96).to(meta))
    else:
        inputs["upper"] = torch.randint(16, (2, T // prior.cfg.ratio), device=meta)
    logits, token_loss = prior(idx.to(meta), targets.to(meta), **inputs)
    assert logits.device == meta and token_loss.shape == (2, T)


def test_the_lyrics_change_what_the_top_prior_predicts():
    torch.manual_seed(0)
    prior = top_prior()
    idx, _ = window_tokens(torch.randint(16, (2, 12)), prior.cfg.start_token)
    seconds = position_seconds(torch.zeros(2), 12, 8, 1000)
    inputs = dict(cond=torch.tensor([[0, 2], [0, 2]]), seconds=seconds, total=torch.tensor([3.0, 3.0]))
    with torch.no_grad():
        a, _ = prior(idx, chars=chars_batch(["daki", "daki"], 96), **inputs)
        b, _ = prior(idx, chars=chars_batch(["daki", "mosu"], 96), **inputs)
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_windows_keep_their_prompt_and_upsampler_windows_start_on_a_code_above():
    assert plan_windows(0, 10, 4, 2, 1) == [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    for start, pos, end in plan_windows(5, 40, 16, 7, 4):
        assert start % 4 == 0 and 0 < end - start <= 16 and pos - start >= min(7, pos)
    assert plan_windows(40, 40, 16, 8, 4) == []
    # a prompt of a whole context would add no code: each window still samples at least one (or a code above's)
    assert plan_windows(0, 6, 4, 4, 1) == [(0, 0, 4), (1, 4, 5), (2, 5, 6)]
    assert plan_windows(0, 24, 16, 16, 4) == [(0, 0, 16), (4, 16, 20), (8, 20, 24)]


def test_a_context_that_the_hop_ratio_does_not_divide_is_refused():
    from nexttoken.errors import UserError

    with pytest.raises(UserError, match="multiple of 4"):
        PriorConfig(level="middle", context=18, ratio=4, **LABELS).validate()
    with pytest.raises(UserError, match="--cross-every 3"):
        PriorConfig(level="top", n_layer=2, cross_every=3, **LABELS).validate()
    # an upsampler has no lyrics: one block is enough, whatever --cross-every says (checked before its ratio is known)
    assert PriorConfig(level="middle", n_layer=1, cross_every=2, **LABELS).validate().n_layer == 1
    # --lyrics-width is the lyrics encoder's: checked only where there is one
    with pytest.raises(UserError, match="--lyrics-width 10"):
        PriorConfig(level="top", lyrics_width=10, **LABELS).validate()
    assert PriorConfig(level="middle", ratio=4, lyrics_width=10, **LABELS).validate().lyrics_width == 10
    assert not PriorConfig(level="top", lyrics=False, lyrics_width=10, **LABELS).validate().lyrics


def test_an_upsampler_sampled_in_stretches_side_by_side_samples_each_stretch_from_its_level_above():
    """Stretches in one batch: each is what sampling it alone from the level above's codes over it gives."""
    from nexttoken.jukebox.sample import upsample_in_spans

    torch.manual_seed(2)
    prior = upsampler()
    cond, upper = torch.tensor([[1, 2]]), torch.randint(16, (1, 12))
    greedy = type(JUKEBOX_SAMPLING)(temperature=0.0)
    both = upsample_in_spans(prior, cond, upper, 2, greedy, torch.Generator(), keep=8)
    assert both.shape == (1, 48)
    for k in range(2):
        alone = sample_level(prior, torch.zeros(1, 0, dtype=torch.long), 24,
                             upsampler_conditioning(prior, cond, upper[:, 6 * k : 6 * k + 6]), greedy,
                             torch.Generator(), keep=8)
        assert torch.equal(both[:, 24 * k : 24 * k + 24], alone)
    assert upsample_in_spans(prior, cond, upper[:, :5], 2, greedy, torch.Generator(), keep=8).shape == (1, 20)
    counted = []  # 3 stretches of 20 codes for a piece of 52: the padding past its end is not progress
    upsample_in_spans(prior, cond, torch.randint(16, (1, 13)), 3, greedy, torch.Generator(), 8, counted.append)
    assert sum(counted) == 52
