import itertools

import pytest
import torch

from nexttoken.model import GPT, GPTConfig

VARIANTS = [
    dict(norm=norm, pos=pos, bias=bias)
    for norm, pos, bias in itertools.product(["pre", "post", "none"], ["learned", "rope", "none"], [True, False])
]


def tiny(**kw) -> GPT:
    cfg = dict(vocab_size=23, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_causality_by_gradient(kw):
    """The loss at position t has no gradient with respect to any input after t."""
    model = tiny(**kw)
    idx = torch.randint(0, 23, (2, 12))
    emb = model.tok_emb(idx).detach().requires_grad_(True)
    # Feed embeddings through x_add on a zero-embedding token stream to take gradients w.r.t. each position's input.
    model.tok_emb.weight.data.zero_()
    t = 5
    logits, _ = model(torch.zeros_like(idx), x_add=emb)
    logits[:, t].sum().backward()
    grad = emb.grad.abs().sum(dim=(0, 2))  # per position
    assert torch.all(grad[t + 1 :] == 0)
    assert torch.all(grad[: t + 1] > 0)


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_kv_cache_equals_full_recomputation(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 23, (3, 20))
    full, _ = model(idx)
    cache = model.new_cache(3)
    pieces = [model(idx[:, :7], cache=cache)[0]]  # a multi-token prefill, then one token at a time
    pieces += [model(idx[:, i : i + 1], cache=cache)[0] for i in range(7, 20)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_cached_chunks_of_several_tokens():
    model = tiny(pos="rope")
    idx = torch.randint(0, 23, (2, 18))
    full, _ = model(idx)
    cache = model.new_cache(2)
    pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 5), (5, 9), (9, 10), (10, 18)]]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_loss_ignores_minus_one_and_per_token_loss():
    model = tiny()
    idx = torch.randint(0, 23, (2, 8))
    targets = torch.randint(0, 23, (2, 8))
    targets[:, :5] = -1
    logits, loss = model(idx, targets)
    _, per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (2, 8)
    assert torch.all(per_token[:, :5] == 0)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].flatten(0, 1), targets[:, 5:].flatten())
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(per_token.sum() / 6, loss, atol=1e-6)


def test_prefix_condition_tokens_change_output_and_keep_causality():
    model = tiny(n_cond=5)
    idx = torch.randint(0, 23, (1, 10))
    a, _ = model(idx, cond=torch.tensor([[1, 2]]))
    b, _ = model(idx, cond=torch.tensor([[3, 2]]))
    assert a.shape == (1, 10, 23)
    assert not torch.allclose(a, b)
    # Changing a later token leaves earlier logits untouched, with the prefix in place.
    idx2 = idx.clone()
    idx2[0, 6] = (idx[0, 6] + 1) % 23
    c, _ = model(idx2, cond=torch.tensor([[1, 2]]))
    assert torch.allclose(a[:, :6], c[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], c[:, 6:])
    # And the cache gives the same logits when the prefix goes in with the first chunk.
    cache = model.new_cache(1)
    parts = [model(idx[:, :4], cond=torch.tensor([[1, 2]]), cache=cache)[0]]
    parts += [model(idx[:, i : i + 1], cache=cache)[0] for i in range(4, 10)]
    assert torch.allclose(torch.cat(parts, 1), a, atol=1e-5)


def test_additive_input_changes_output_causally():
    model = tiny()
    idx = torch.randint(0, 23, (1, 10))
    x_add = torch.randn(1, 10, 16)
    a, _ = model(idx, x_add=x_add)
    x2 = x_add.clone()
    x2[0, 4] += torch.randn(16)  # not a constant: LayerNorm would remove that
    b, _ = model(idx, x_add=x2)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_cross_attention_to_memory():
    model = tiny(cross_every=1, memory_dim=8)
    assert all(b.has_cross for b in model.blocks)
    idx = torch.randint(0, 23, (2, 9))
    mem = torch.randn(2, 5, 8)
    a, _ = model(idx, memory=mem)
    b, _ = model(idx, memory=mem + 1)
    assert not torch.allclose(a, b)
    # A masked memory position has no effect.
    mask = torch.tensor([[True] * 4 + [False]] * 2)
    mem2 = mem.clone()
    mem2[:, 4] = 100.0
    c, _ = model(idx, memory=mem, memory_mask=mask)
    d, _ = model(idx, memory=mem2, memory_mask=mask)
    assert torch.allclose(c, d, atol=1e-6)
    # Still causal in the decoder sequence, and the cache (memory keys computed once) agrees.
    idx2 = idx.clone()
    idx2[:, 5] = (idx[:, 5] + 1) % 23
    e, _ = model(idx2, memory=mem)
    assert torch.allclose(a[:, :5], e[:, :5], atol=1e-6)
    cache = model.new_cache(2)
    parts = [model(idx[:, :3], memory=mem, cache=cache)[0]]
    parts += [model(idx[:, i : i + 1], cache=cache)[0] for i in range(3, 9)]
    assert torch.allclose(torch.cat(parts, 1), a, atol=1e-5)


def test_hook_points_expose_and_patch_activations():
    model = tiny()
    idx = torch.randint(0, 23, (2, 6))
    logits, acts = model.run_with_cache(idx)
    assert set(acts) == set(model.hook_names())
    assert acts["blocks.0.attn.hook_pattern"].shape == (2, 2, 6, 6)
    pattern = acts["blocks.1.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 2, 6), atol=1e-5)
    assert torch.all(pattern.triu(diagonal=1) == 0)  # causal
    assert acts["blocks.0.mlp.hook_post"].shape == (2, 6, 64)
    assert acts["blocks.1.hook_resid_post"].shape == (2, 6, 16)
    plain, _ = model(idx)
    assert torch.allclose(logits, plain, atol=1e-5)  # the explicit attention path agrees with SDPA
    # Zero-ablating the MLP output changes the logits: hooks can replace activations.
    h = model.blocks[1].hook_mlp_out.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    ablated, _ = model(idx)
    h.remove()
    assert not torch.allclose(ablated, plain)


def test_paper_sized_model_has_about_4e5_non_embedding_parameters():
    model = GPT(GPTConfig(vocab_size=99, block_size=5, n_layer=2, n_head=4, n_embd=128, mlp_hidden=512, bias=False,
                          norm="post", activation="relu"))
    # Power et al.: 2 layers, width 128, 4 heads, MLP 512: "about 4e5 non-embedding parameters" (head included).
    assert 400_000 < model.num_params() < 420_000


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("T", [32, 128])
def test_flops_per_token_matches_a_count_of_the_matrix_products(tie, T):
    """Kaplan et al.'s 6N + 12 L C T against PyTorch's FLOP counter over a forward and backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    model = GPT(GPTConfig(vocab_size=300, block_size=T, n_layer=2, n_head=4, n_embd=64, attention="math",
                          tie_embeddings=tie))
    idx = torch.randint(0, 300, (2, T))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    measured = counter.get_total_flops() / idx.numel()
    # The formula also counts biases and norms as 6 FLOPs per parameter; the counter sees matrix products only.
    assert measured == pytest.approx(model.flops_per_token(T), rel=0.03)


def test_tied_embeddings_share_storage():
    model = tiny(tie_embeddings=True)
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_context_overflow_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("kw", [dict(norm="pre"), dict(norm="post", pos="rope"), dict(attention="math", n_cond=3)])
def test_last_only_equals_the_last_position_of_the_full_pass(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 23, (3, 11))
    cond = torch.tensor([[0], [1], [2]]) if kw.get("n_cond") else None
    full, _ = model(idx, cond=cond)
    last, _ = model(idx, cond=cond, last_only=True)
    assert last.shape == (3, 1, 23)
    assert torch.allclose(last, full[:, -1:], atol=1e-5)
    cache = model.new_cache(3)
    model(idx[:, :6], cond=cond, cache=cache, last_only=True)  # a last-only prefill still fills the whole cache
    nxt, _ = model(idx[:, 6:], cache=cache)
    assert torch.allclose(nxt, full[:, 6:], atol=1e-5)


def test_math_attention_equals_sdpa():
    a = tiny()
    b = tiny(attention="math")
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 23, (2, 9))
    assert torch.allclose(a(idx)[0], b(idx)[0], atol=1e-5)


def test_init_schemes():
    gpt2 = tiny(init_std=0.05)
    assert abs(gpt2.tok_emb.weight.std().item() - 0.05) < 0.01
    assert gpt2.blocks[0].mlp.fc.bias.abs().sum() == 0
    torch_init = tiny(init="torch")  # PyTorch defaults: N(0, 1) embeddings
    assert abs(torch_init.tok_emb.weight.std().item() - 1.0) < 0.2


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    idx = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return idx, mask


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_rows_equal_each_row_alone(pos):
    """A row's logits do not depend on the padding in front of it: positions count real tokens, pads are masked."""
    model = tiny(pos=pos)
    rows = [[3, 4, 5, 6, 7, 8], [9, 1], [2, 2, 2, 11]]
    idx, mask = left_pad(rows, pad=22)
    padded, _ = model(idx, attention_mask=mask)
    assert torch.isfinite(padded).all()  # pad queries too: each attends at least to itself
    for i, r in enumerate(rows):
        alone, _ = model(torch.tensor([r]))
        assert torch.allclose(padded[i, -len(r):], alone[0], atol=1e-5)
    # The same through the KV cache: a padded prefill, then one real token per row at a time.
    cache = model.new_cache(3)
    model(idx, attention_mask=mask, cache=cache)
    nxt = torch.tensor([[1], [2], [3]])
    stepped, _ = model(nxt, cache=cache)
    for i, r in enumerate(rows):
        alone, _ = model(torch.tensor([r + [nxt[i, 0].item()]]))
        assert torch.allclose(stepped[i, 0], alone[0, -1], atol=1e-5)


def test_hidden_states_feed_the_head():
    model = tiny()
    idx = torch.randint(0, 23, (2, 7))
    h = model.hidden(idx)
    assert h.shape == (2, 7, 16)
    assert torch.allclose(model.head(h), model(idx)[0], atol=1e-6)


def test_missing_required_inputs_are_named():
    with pytest.raises(ValueError, match="memory"):
        tiny(cross_every=1)(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="cond"):
        tiny(n_cond=2)(torch.zeros(1, 4, dtype=torch.long))


def test_every_conditioning_input_at_once_cached_equals_recomputed():
    """Prefix tokens, an additive input, cross-attention memory and rope together: the cache changes nothing."""
    model = tiny(n_cond=4, cross_every=2, memory_dim=8, pos="rope")
    idx = torch.randint(0, 23, (2, 12))
    cond = torch.tensor([[1, 3], [0, 2]])
    x_add = torch.randn(2, 12, 16)
    mem = torch.randn(2, 5, 8)
    mem_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    full, _ = model(idx, cond=cond, x_add=x_add, memory=mem, memory_mask=mem_mask)
    cache = model.new_cache(2)
    parts = [model(idx[:, :5], cond=cond, x_add=x_add[:, :5], memory=mem, memory_mask=mem_mask, cache=cache)[0]]
    parts += [model(idx[:, i : i + 1], x_add=x_add[:, i : i + 1], cache=cache)[0] for i in range(5, 12)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
