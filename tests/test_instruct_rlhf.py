"""The pieces of SFT, the reward model, PPO and DPO, checked against hand computations on tiny models."""

import math

import pytest
import torch
import torch.nn.functional as F

from instruct_fixtures import WORLD, tiny_policy, tiny_reward_model, tokenizer
from nexttoken.errors import UserError
from nexttoken.instruct.corpus import chat_prompt, demonstrations
from nexttoken.instruct.dpo import dpo_loss
from nexttoken.instruct.policy import Responses, last_index, lm_loss_sum, respond, response_rows, token_logprobs
from nexttoken.instruct import ppo
from nexttoken.instruct.advantages import adapt_kl, gae, leave_one_out, token_rewards, whiten
from nexttoken.instruct.ppo import PPOConfig, experience, update
from nexttoken.instruct.rankings import Ranking
from nexttoken.instruct.reward import pairwise_loss, ranking_rows, reward_loss, score_texts
from nexttoken.instruct.sft import demonstration_rows
from nexttoken.training import OptimConfig, autocast, make_optimizer


def test_sft_loss_covers_the_response_and_eos_only():
    tok = tokenizer()
    rows = response_rows(tok, [chat_prompt("What is 2 + 3?"), chat_prompt("Name two towns.")], ["5", "Mossbrook"])
    for i, response in enumerate(["5", "Mossbrook"]):
        want = tok.encode(response, eos=True)
        targets = rows["targets"][i]
        assert targets[targets != -1].tolist() == want  # the response and EOS, nothing of the prompt
        start = len(tok.encode(chat_prompt(["What is 2 + 3?", "Name two towns."][i])))
        assert (targets[: start - 1] == -1).all() and rows["ids"][i, start : start + len(want)].tolist() == want
    assert rows["mask"][0].sum() < rows["mask"][1].sum() and (rows["targets"][0][rows["mask"][0] == 0] == -1).all()
    # The summed loss is the cross-entropy of exactly those tokens, by hand.
    policy = tiny_policy()
    logits = policy(rows["ids"], rows["mask"])
    keep = rows["targets"] != -1
    by_hand = F.cross_entropy(logits[keep], rows["targets"][keep], reduction="sum")
    assert lm_loss_sum(policy, rows).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_sft_gradient_ignores_the_prompts_targets():
    """Changing the prompt's tokens' would-be targets does not change the loss: they are masked, not just small."""
    policy = tiny_policy()
    demos = demonstrations(WORLD, 4, seed=0)
    rows = demonstration_rows(policy, demos)
    loss = lm_loss_sum(policy, rows)
    edited = dict(rows, targets=rows["targets"].clone())
    edited["targets"][:, 0] = -1  # the first position is always the prompt's
    assert lm_loss_sum(policy, edited).item() == loss.item()


def test_reward_loss_on_a_hand_made_ranking():
    scores = torch.tensor([[3.0, 2.0, 1.0]])  # ranked best first
    pairs = torch.ones(3, 3).triu(1)[None]
    loss, right = pairwise_loss(scores, pairs)
    by_hand = -(math.log(torch.sigmoid(torch.tensor(1.0))) * 2 + math.log(torch.sigmoid(torch.tensor(2.0)))) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6) and right.item() == 1.0
    wrong, right = pairwise_loss(scores.flip(1), pairs)
    assert wrong.item() > loss.item() and right.item() == 0.0


def test_ranking_rows_put_outputs_best_first_and_drop_identical_pairs():
    policy = tiny_policy()
    task = demonstrations(WORLD, 1, seed=0)[0].task
    ranking = Ranking(task, ["b", "a", "b", "c"], [True, True, False, True], order=[1, 3, 0, 2], labeler="x")
    rows = ranking_rows(policy, [ranking])
    tok = policy.tokenizer
    responses = [tok.decode(r[t != -1][:-1] if f else r[t != -1]) for r, t, f in
                 zip(rows["ids"][0, :, 1:], rows["targets"][0, :, :-1], [True, True, True, False])]
    assert responses == ["a", "c", "b", "b"]  # best first; the last 'b' has no EOS (it never finished)
    pairs = rows["pairs"][0]
    assert pairs[2, 3] == 0 and pairs.sum() == 5  # 6 pairs, less b against b
    loss, logs = reward_loss(tiny_reward_model(), rows)
    assert loss.item() > 0 and 0 <= logs["accuracy"].item() <= 1


def test_ranking_rows_drop_the_pairs_a_labeler_called_a_tie():
    task = demonstrations(WORLD, 1, seed=0)[0].task
    ranking = Ranking(task, ["a", "b", "c", "d"], [True] * 4, order=[0, 1, 2, 3], labeler="x", tiers=[0, 1, 1, 2])
    pairs = ranking_rows(tiny_policy(), [ranking])["pairs"][0]
    assert pairs[1, 2] == 0 and pairs.sum() == 5  # 6 pairs, less the tie of places 1 and 2
    assert pairs[0, 1] == pairs[0, 2] == pairs[1, 3] == pairs[2, 3] == 1
    assert ranking.preferences() == 5
    assert Ranking(task, ["a", "a", "b"], [True] * 3, [0, 1, 2], "x", tiers=[0, 1, 1]).preferences() == 1
    assert Ranking(task, ["a", "b", "c"], [True] * 3, [0, 1, 2], "x", tiers=[0, 0, 0]).preferences() == 0


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    rm = tiny_reward_model()
    tok = rm.tokenizer
    ids = tok.encode(chat_prompt("What is 2 + 3?") + "5", eos=True)
    alone = rm(torch.tensor([ids]))
    pad = tok.pad_id
    right_padded = torch.tensor([ids + [pad] * 5])
    left_padded = torch.tensor([[pad] * 3 + ids])
    mask_r = torch.tensor([[1] * len(ids) + [0] * 5])
    mask_l = torch.tensor([[0] * 3 + [1] * len(ids)])
    assert last_index(mask_r).item() == len(ids) - 1
    assert torch.allclose(rm(right_padded, mask_r), alone, atol=1e-5)
    assert torch.allclose(rm(left_padded, mask_l), alone, atol=1e-5)


def test_the_reward_head_scores_in_fp32_under_bf16_autocast():
    """The scalar head reads the backbone's hidden states in fp32: a bf16 reward rounds away the differences of close
    scores that the pairwise loss learns from."""
    rm = tiny_reward_model()
    rows = response_rows(rm.tokenizer, [chat_prompt("What is 2 + 3?")] * 2, ["5", "6"])
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        hidden = rm.backbone.hidden(rows["ids"], rows["mask"])
        reward = rm(rows["ids"], rows["mask"])
    by_hand = F.linear(hidden.float(), rm.score.weight, rm.score.bias).squeeze(-1)
    assert reward.dtype == torch.float32
    assert torch.allclose(reward, by_hand.gather(1, last_index(rows["mask"])[:, None]).squeeze(1), atol=1e-6)


def test_right_padded_rows_score_the_same_without_their_mask():
    """SFT, the reward model and DPO train on right-padded rows and leave the attention unmasked (the fused kernel, and
    no read of the mask back from the device): no real token attends to the padding after it."""
    rm = tiny_reward_model()
    rows = response_rows(rm.tokenizer, [chat_prompt("What is 2 + 3?")] * 2, ["5", "the answer is five"])
    assert (rows["mask"] == 0).any()
    with torch.no_grad():
        assert torch.allclose(rm(rows["ids"], rows["mask"], right_padded=True), rm(rows["ids"], rows["mask"]),
                              atol=1e-5)


def test_the_training_losses_read_nothing_back_from_the_device():
    """Tensors without data raise on any read of a value (bool(), .item(), indexing by a mask): the losses that fit
    trains SFT, the reward model and DPO with read none, so a GPU never waits for them mid-step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rows = response_rows(tokenizer(), [chat_prompt("What is 2 + 3?")] * 2, ["5", "the answer is five"])
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        policy, rm = tiny_policy(), tiny_reward_model()
        sft = {k: fake.from_tensor(v) for k, v in rows.items()}
        ranked = {**{k: v.view(1, 2, -1) for k, v in sft.items()}, "pairs": torch.ones(1, 2, 2).triu(1)}
        dpo = dpo_loss(policy, tiny_policy(1), 0.1, ranked)[0]
        assert all(loss.shape == () for loss in (lm_loss_sum(policy, sft), reward_loss(rm, ranked)[0], dpo))


def test_gae_against_a_hand_computation():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.2, 0.4, 9.0], [0.1, 9.0, 9.0, 9.0]])  # 9s are past the end: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    g, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, g, lam)
    d2 = 1.0 - 0.4
    d1 = -0.2 + g * 0.4 - 0.2
    d0 = 0.1 + g * 0.2 - 0.3
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a0 + 0.3, a1 + 0.2, a2 + 0.4, 0.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.5 - 0.1, 0, 0, 0], abs=1e-6)
    w = whiten(adv, mask)
    assert w[mask.bool()].mean().item() == pytest.approx(0, abs=1e-6) and (w[~mask.bool()] == 0).all()


def test_leave_one_out_advantage_is_the_return_minus_the_other_responses_mean():
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [2.0, 0.0, 0.0], [0.3, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # 9 is past the end
    adv = leave_one_out(rewards, mask, group=2)
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.0])  # return 1.0 against its partner's 0.5
    assert adv[1].tolist() == pytest.approx([-0.5, 0.0, 0.0])
    assert adv[2].tolist() == pytest.approx([1.4, 0.0, 0.0])  # the next prompt's pair: 2.0 against 0.6
    assert adv[3].tolist() == pytest.approx([-1.4, -1.4, 0.0])
    assert leave_one_out(rewards[:1].repeat(4, 1), mask[:1].repeat(4, 1), group=4).abs().max() == 0  # all alike


def test_a_group_of_responses_is_its_own_baseline_without_a_value_head(monkeypatch):
    policy, ref, rm = tiny_policy(1), tiny_policy(1), tiny_reward_model(2)
    monkeypatch.setattr(ppo, "episode_reward", lambda score, *_: torch.tensor([0.0, 1, 2, 3, 3, 2, 1, 0]))
    cfg = PPOConfig(max_new_tokens=6, rollouts=8, minibatch=4, group=4, temperature=1.0)
    prompts = [chat_prompt("What is 2 + 3?")] * 4 + [chat_prompt("Name two towns.")] * 4
    exp = experience(policy, ref, rm, None, prompts, cfg, beta=0.02, norm=(0.0, 1.0),
                     generator=torch.Generator().manual_seed(0))
    first = exp.advantages[:, 0]
    assert torch.allclose(exp.advantages, first[:, None] * exp.action_mask)  # one advantage for all of a response
    # Each response against the mean of the other three of its prompt (no KL: the policy is the reference), scaled.
    expected = torch.tensor([-2.0, -2 / 3, 2 / 3, 2, 2, 2 / 3, -2 / 3, -2])
    assert torch.allclose(first / first[3] * 2, expected, atol=1e-5) and first[3] > 0
    opt = make_optimizer(policy, OptimConfig(lr=1e-3, warmup_steps=0))
    stats = update(policy, None, opt, exp, cfg, OptimConfig(lr=1e-3), torch.Generator().manual_seed(0))
    assert "value_loss" not in stats and stats["clip_frac"] >= 0


def test_rollouts_must_split_into_whole_groups():
    with pytest.raises(UserError, match="--group"):
        PPOConfig(rollouts=8, minibatch=4, group=3)


def test_the_kl_controller_steers_beta_toward_the_target_by_at_most_20_percent_a_horizon():
    assert adapt_kl(0.1, kl=4.4, target=4.0, horizon=100, n=10) == pytest.approx(0.1 * (1 + 0.1 * 10 / 100))
    assert adapt_kl(0.1, kl=2.0, target=4.0, horizon=100, n=10) < 0.1
    beta = 0.1
    for _ in range(10):  # one horizon of episodes, ten at a time, the KL far above target throughout
        beta = adapt_kl(beta, kl=1000.0, target=4.0, horizon=100, n=10)
    assert 0.1 * 1.2 < beta < 0.1 * 1.22  # 2% a step, compounded: the error is clipped to 20%
    assert adapt_kl(0.1, kl=4.0, target=4.0, horizon=100, n=10) == 0.1


def test_kl_penalty_lowers_the_reward_where_the_policy_drifts_up_from_sft():
    kl = torch.tensor([[0.3, -0.1, 0.2]])
    mask = torch.ones(1, 3)
    rewards = token_rewards(kl, torch.tensor([1.0]), mask, beta=0.5)
    assert rewards[0, 0] < 0 < rewards[0, 1]  # log pi > log pi_SFT costs reward, the reverse earns it
    assert rewards[0, 2].item() == pytest.approx(1.0 - 0.1)  # the score arrives at the last token
    assert token_rewards(kl, torch.tensor([1.0]), mask, beta=0.0)[0, :2].abs().sum() == 0


def test_experience_of_the_sft_policy_has_no_kl_and_no_eos_penalty(monkeypatch):
    policy, ref, rm = tiny_policy(1), tiny_policy(1), tiny_reward_model(2)
    value = tiny_reward_model(3)
    cfg = PPOConfig(max_new_tokens=6, rollouts=4, minibatch=2, no_eos_score=-7.0, temperature=0.7)
    prompts = [chat_prompt("What is 2 + 3?"), chat_prompt("Name two towns. Name them all.")] * 2
    exp = experience(policy, ref, rm, value, prompts, cfg, beta=0.02, norm=(0.0, 1.0),
                     generator=torch.Generator().manual_seed(0))
    assert exp.kl.abs().max() < 1e-5  # the policy is the reference
    assert exp.action_mask.sum(1).max() <= 6
    # An untrained model rarely ends within 6 tokens: those episodes get the fixed score at their last token.
    unfinished = ~exp.finished
    assert unfinished.any()
    cfg.no_eos_score = 0.0
    exp0 = experience(policy, ref, rm, value, prompts, cfg, beta=0.02, norm=(0.0, 1.0),
                      generator=torch.Generator().manual_seed(0))
    assert (exp.returns[unfinished, 0] < exp0.returns[unfinished, 0]).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_update_sees_a_ratio_of_one(precision):
    """The rollout's log-probs (temperature applied) equal the update's before any step: no hidden drift such as
    dropout, a missing temperature or a rollout in another precision than the update, which would make PPO clip from
    its first minibatch."""
    policy, ref, rm, value = tiny_policy(1), tiny_policy(1), tiny_reward_model(2), tiny_reward_model(3)
    cfg = PPOConfig(max_new_tokens=8, rollouts=4, minibatch=4, epochs=1, temperature=0.6, precision=precision)
    prompts = [chat_prompt("What is 2 + 3?"), chat_prompt("Name two towns.")] * 2
    with autocast(torch.device("cpu"), precision):  # as train_ppo rolls out
        exp = experience(policy, ref, rm, value, prompts, cfg, 0.02, (0.0, 1.0), torch.Generator().manual_seed(0))
    assert exp.values.dtype == exp.logprobs.dtype == exp.advantages.dtype == torch.float32
    optim = OptimConfig(lr=1e-3, warmup_steps=0)  # one minibatch: its statistics are taken before the step
    opt = make_optimizer(torch.nn.ModuleDict({"p": policy, "v": value}), optim)
    stats = update(policy, value, opt, exp, cfg, optim, torch.Generator().manual_seed(0))
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] < 1e-10


def test_responses_stop_at_eos_pad_after_it_and_never_sample_pad():
    policy = tiny_policy()
    tok = policy.tokenizer
    with torch.no_grad():  # make pad by far the likeliest token: the sampler must still never draw it
        policy.gpt.tok_emb.weight[tok.pad_id] = policy.gpt.tok_emb.weight.abs().max() * 50
    out = respond(policy, [chat_prompt("What is 2 + 3?"), "Hi"], 12, temperature=1.0,
                  generator=torch.Generator().manual_seed(0))
    response, mask = out.response, out.response_mask
    assert not (response[mask.bool()] == tok.pad_id).any()
    for row, m, fin in zip(response.tolist(), mask.tolist(), out.finished.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # right-padded
        assert (tok.eos_id in row[:n]) == fin and (not fin or row[n - 1] == tok.eos_id)
        assert all(t == tok.pad_id for t in row[n:])


def test_a_padded_batch_responds_as_each_prompt_alone():
    policy = tiny_policy()
    prompts = [chat_prompt("What is 2 + 3?"), "Hi"]
    both = respond(policy, prompts, 8, temperature=0.0).texts
    assert both == [respond(policy, [p], 8, temperature=0.0).texts[0] for p in prompts]
    assert both == respond(policy, prompts, 8, temperature=0.0, use_cache=False).texts


def test_ppo_scores_a_response_as_the_text_the_reward_model_was_trained_on():
    """Rankings hold texts, which the reward model reads tokenized afresh; a policy can sample the same text as other
    tokens (here one token per letter): PPO scores the text, not the ids it happened to sample."""
    rm, tok = tiny_reward_model(2), tokenizer()
    prompt = chat_prompt("Where does Kalo live?")
    prompt_ids = tok.encode(prompt)
    letters = [i for c in "Mossbrook" for i in tok.encode(c)] + [tok.eos_id]
    assert letters[:-1] != tok.encode("Mossbrook") and tok.decode(letters[:-1]) == "Mossbrook"
    ids = torch.tensor([prompt_ids + letters])
    out = Responses(ids, torch.ones_like(ids), len(prompt_ids), torch.tensor([True]), ["Mossbrook"])
    as_text = score_texts(rm, [prompt], ["Mossbrook"], [True])
    assert ppo.scores(rm, [prompt], out).item() == pytest.approx(as_text.item(), abs=1e-5)
    with torch.no_grad():
        assert abs(rm(ids, torch.ones_like(ids)).item() - as_text.item()) > 1e-3  # the ids alone score otherwise


def test_rollout_log_probs_leave_out_the_pad_token_as_the_sampler_does():
    policy = tiny_policy()
    tok = policy.tokenizer
    with torch.no_grad():  # pad the likeliest token: a distribution that kept it would differ from the sampler's
        policy.gpt.tok_emb.weight[tok.pad_id] = policy.gpt.tok_emb.weight.abs().max() * 50
    ids = torch.tensor([tok.encode(chat_prompt("What is 2 + 3?")) + tok.encode("5")])
    logits = ppo.response_logits(policy, ids, torch.ones_like(ids), ids.shape[1] - 1, temperature=0.7)
    probs = logits.softmax(-1)
    assert probs[..., tok.pad_id].max().item() == 0.0 and torch.allclose(probs.sum(-1), torch.ones(1, 1))
    assert torch.isfinite(-(probs * logits.log_softmax(-1)).sum(-1)).all()  # PPO's entropy statistic


def test_log_probs_use_the_sampling_temperature():
    policy = tiny_policy()
    ids = torch.tensor([policy.tokenizer.encode(chat_prompt("What is 2 + 3?") + "5")])
    q, token = ids.shape[1] - 1, ids[:, -1:]
    at_one, at_half = (ppo.response_logits(policy, ids, torch.ones_like(ids), q, t).detach() for t in (1.0, 0.5))
    expected = torch.log_softmax(at_one * 2, -1)[0, 0, token[0, 0]].item()
    assert token_logprobs(at_half, token).item() == pytest.approx(expected, abs=1e-5)
    assert token_logprobs(at_one, token).item() != pytest.approx(expected, abs=1e-3)


def test_dpo_loss_is_log_two_at_the_reference_and_falls_when_the_winner_gains():
    policy, ref = tiny_policy(1), tiny_policy(1)
    task = demonstrations(WORLD, 1, seed=0)[0].task
    rows = ranking_rows(policy, [Ranking(task, ["5", "What is 4 + 4?"], [True, True], [0, 1], "x")])
    loss, _ = dpo_loss(policy, ref, 0.1, rows)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    loss.backward()
    opt.step()
    assert dpo_loss(policy, ref, 0.1, rows)[0].item() < math.log(2)
