import pytest
import torch

from nexttoken.model import GPT, GPTConfig
from nexttoken.sampling import filter_logits, generate, sample

V = 10


def fixed_logits(values):
    """A fake model whose next-token logits are always ``values``, whatever the input."""
    row = torch.tensor(values, dtype=torch.float32)

    def fn(tokens, cache):
        return row.expand(tokens.shape[0], tokens.shape[1], -1)

    return fn


def test_top_k_keeps_only_the_k_largest():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0]])
    kept = ~filter_logits(logits, top_k=2).isinf()
    assert kept.tolist() == [[False, True, False, True, False]]
    out = sample(fixed_logits([0.0, 5.0, 1.0, 4.0, 2.0]), torch.zeros(200, 1, dtype=torch.long), 5, top_k=2,
                 generator=torch.Generator().manual_seed(0))
    assert set(out.tokens[:, 1:].unique().tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert (~filter_logits(logits, top_p=0.5).isinf()).tolist() == [[True, False, False, False]]
    assert (~filter_logits(logits, top_p=0.79).isinf()).tolist() == [[True, True, False, False]]
    assert (~filter_logits(logits, top_p=0.81).isinf()).tolist() == [[True, True, True, False]]
    assert (~filter_logits(logits, top_p=0.01).isinf()).tolist() == [[True, False, False, False]]  # top one stays


def test_top_p_on_shuffled_vocabulary():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    assert (~filter_logits(logits, top_p=0.79).isinf()).tolist() == [[False, True, False, True]]


def test_masks_allowed_and_forbidden():
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[2, 7]] = True
    out = sample(fixed_logits([5.0] + [0.0] * (V - 1)), torch.zeros(50, 1, dtype=torch.long), 4, allowed=allowed)
    assert set(out.tokens[:, 1:].unique().tolist()) <= {2, 7}
    forbidden = torch.zeros(V, dtype=torch.bool)
    forbidden[0] = True
    out = sample(fixed_logits([50.0] + [0.0] * (V - 1)), torch.zeros(50, 1, dtype=torch.long), 4, forbidden=forbidden)
    assert 0 not in out.tokens[:, 1:].tolist()


def test_mask_function_sees_the_sequence():
    def only_next(tokens):  # allow exactly last token + 1: a deterministic counter
        m = torch.zeros(tokens.shape[0], V, dtype=torch.bool)
        m[torch.arange(tokens.shape[0]), (tokens[:, -1] + 1) % V] = True
        return m

    out = sample(fixed_logits([0.0] * V), torch.tensor([[3]]), 5, allowed=only_next)
    assert out.tokens.tolist() == [[3, 4, 5, 6, 7, 8]]


def test_temperature_sharpens_and_zero_is_greedy():
    fn = fixed_logits([1.0, 1.5, 0.0])
    g = torch.Generator().manual_seed(0)
    hot = sample(fn, torch.zeros(4000, 1, dtype=torch.long), 1, temperature=2.0, generator=g).tokens[:, 1]
    cold = sample(fn, torch.zeros(4000, 1, dtype=torch.long), 1, temperature=0.5, generator=g).tokens[:, 1]
    assert (cold == 1).float().mean() > (hot == 1).float().mean() + 0.1
    # The empirical distribution at T=1 matches softmax.
    t1 = sample(fn, torch.zeros(20000, 1, dtype=torch.long), 1, generator=g).tokens[:, 1]
    freq = torch.bincount(t1, minlength=3).float() / len(t1)
    assert torch.allclose(freq, torch.tensor([1.0, 1.5, 0.0]).softmax(0), atol=0.015)
    greedy = sample(fn, torch.zeros(3, 1, dtype=torch.long), 4, temperature=0)
    assert greedy.tokens[:, 1:].eq(1).all()


def test_stop_tokens_pad_with_minus_one_and_stop_early():
    calls = []

    def fn(tokens, cache):
        calls.append(tokens.shape[1])
        logits = torch.full((tokens.shape[0], tokens.shape[1], V), -1e9)
        # Row 0 says 9 (the stop token) at once; row 1 counts up from its last token.
        logits[0, -1, 9] = 0
        nxt = (tokens[1, -1] + 1) % V
        logits[1, -1, nxt] = 0
        return logits

    out = sample(fn, torch.tensor([[1], [6]]), 10, stop_tokens=[9], temperature=0)
    assert out.tokens[0].tolist()[:2] == [1, 9] and set(out.tokens[0, 2:].tolist()) == {-1}
    assert out.tokens[1].tolist() == [6, 7, 8, 9]
    assert out.lengths.tolist() == [2, 4] and out.finished.tolist() == [True, True]
    assert len(calls) == 3  # stopped as soon as both rows finished


def test_priming_keeps_the_prompt():
    prompt = torch.tensor([[4, 2, 4, 2]])
    out = sample(fixed_logits([0.0] * V), prompt, 3)
    assert out.tokens[:, :4].tolist() == prompt.tolist() and out.tokens.shape == (1, 7)


def make_model(**kw):
    cfg = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_cached_greedy_equals_uncached(pos):
    model = make_model(pos=pos)
    prompt = torch.randint(0, V, (3, 4))
    a = generate(model, prompt, 10, temperature=0, use_cache=True)
    b = generate(model, prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)


def test_cached_sampling_equals_uncached_with_the_same_seed():
    model = make_model(n_cond=3)
    prompt = torch.randint(0, V, (4, 2))
    cond = torch.tensor([[1], [2], [0], [1]])
    a = generate(model, prompt, 12, cond=cond, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 12, cond=cond, top_p=0.9, generator=torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(a.tokens, b.tokens)


def test_generation_longer_than_the_context_slides():
    model = make_model()
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 40, temperature=0.8)
    assert out.tokens.shape == (2, 43) and out.tokens.min() >= 0


def test_cached_sampling_of_a_padded_batch_equals_each_row_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16, pos="rope")).eval()
    rows = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    width = max(map(len, rows))
    prompt = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    for use_cache in (True, False):
        batch = generate(model, prompt, 8, prompt_mask=mask, temperature=0, use_cache=use_cache)
        for i, r in enumerate(rows):
            alone = generate(model, torch.tensor([r]), 8, temperature=0)
            assert batch.tokens[i, width:].tolist() == alone.tokens[0, len(r):].tolist()
