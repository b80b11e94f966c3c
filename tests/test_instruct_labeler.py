import random

import pytest

from nexttoken.errors import UserError
from nexttoken.instruct.labeler import HELD_OUT_LABELER, Labeler, labeler_panel, win_rate
from nexttoken.instruct.tasks import FAMILIES, make_tasks
from nexttoken.instruct.world import Task, make_world

WORLD = make_world(0)
TASKS = make_tasks(WORLD, 90, seed=0, families=tuple(FAMILIES))
EXACT = Labeler(noise=0.0, flip=0.0)
SUM = Task("arithmetic", "add", "What is 12 + 30?", "42")


def wrong(task: Task) -> str:
    return "I am not sure about that one."


def rambling(task: Task) -> str:
    """The right answer, buried in a paragraph: correct but long."""
    return (f"{task.answer}\nThat is what I think, and I have thought about it for a long time, because it is a "
            f"question that deserves a careful and complete reply with many words in it.")


def continuation(task: Task) -> str:
    """What a base model does with an instruction: list more instructions."""
    return f"{task.instruction}\nWrite a short poem about a brave fox.\nWhat is 3 + 4?"


@pytest.mark.parametrize("worse", [wrong, rambling, continuation])
def test_without_noise_the_reference_beats_a_worse_output_on_every_task(worse):
    rng = random.Random(0)
    for task in TASKS:
        assert EXACT.prefer(task, task.answer, worse(task), rng) == 0, task
        assert EXACT.prefer(task, worse(task), task.answer, rng) == 1, task


def test_without_noise_rankings_follow_correctness_then_following_then_brevity():
    outputs = ["What is 5 + 5?", "41", rambling(SUM), "42"]
    for seed in range(5):
        assert EXACT.rank(SUM, outputs, random.Random(seed)) == [3, 2, 1, 0]
    # Equal outputs tie, and a tie is broken by the rng, not by position.
    firsts = {EXACT.rank(SUM, ["42", "42"], random.Random(seed))[0] for seed in range(20)}
    assert firsts == {0, 1}


def test_flips_reverse_preferences_at_the_configured_rate():
    rng = random.Random(0)
    flipper = Labeler(noise=0.0, flip=0.3)
    reversed_share = sum(flipper.prefer(SUM, "42", "41", rng) for _ in range(4000)) / 4000
    assert 0.27 < reversed_share < 0.33


def test_gaussian_noise_reverses_close_calls_more_often_than_clear_ones():
    """Concise against rambling differs by brevity only (a small utility gap); right against wrong by correctness."""
    rng = random.Random(0)
    noisy = Labeler(noise=0.3)
    close = sum(noisy.prefer(SUM, "42", rambling(SUM), rng) for _ in range(2000)) / 2000
    clear = sum(noisy.prefer(SUM, "42", "41", rng) for _ in range(2000)) / 2000
    assert 0.1 < close < 0.5 and clear < 0.01
    assert sum(EXACT.prefer(SUM, "42", rambling(SUM), rng) for _ in range(200)) == 0


def test_a_panel_disagrees_and_the_held_out_labeler_is_none_of_them():
    panel = labeler_panel(4, seed=0)
    assert panel == labeler_panel(4, seed=0) and len({(lb.seed, lb.noise) for lb in panel}) == 4
    assert HELD_OUT_LABELER not in panel and HELD_OUT_LABELER.seed not in {lb.seed for lb in panel}
    pairs = [(t, t.answer, rambling(t)) for t in TASKS] + [(t, wrong(t), continuation(t)) for t in TASKS]
    votes = [[lb.prefer(t, a, b, random.Random(lb.seed + i)) for i, (t, a, b) in enumerate(pairs)] for lb in panel]
    agreement = sum(v0 == v1 for v0, v1 in zip(votes[0], votes[1])) / len(pairs)
    assert 0.5 < agreement < 1.0


def test_win_rates_split_ties_and_are_seeded_by_the_labeler():
    answers = [t.answer for t in TASKS]
    assert win_rate(TASKS, answers, answers, HELD_OUT_LABELER) == 0.5
    assert win_rate(TASKS, answers, [wrong(t) for t in TASKS], HELD_OUT_LABELER) > 0.95
    base = [continuation(t) for t in TASKS]
    rate = win_rate(TASKS, answers, base, HELD_OUT_LABELER)
    assert rate == win_rate(TASKS, answers, base, HELD_OUT_LABELER) and rate > 0.95
    assert win_rate(TASKS, base, answers, EXACT) + win_rate(TASKS, answers, base, EXACT) == 1.0
    with pytest.raises(UserError, match="one output of each model per task"):
        win_rate(TASKS, answers, answers[:-1], HELD_OUT_LABELER)
    with pytest.raises(UserError, match="noise"):
        Labeler(noise=-1.0)


def test_outputs_equally_good_to_a_labeler_share_a_tier_and_a_margin_of_zero_is_a_strict_order():
    outputs = ["41", "42", "43", "The sum of twelve and thirty is 42, as anyone can count."]
    for seed in range(10):
        order, tiers = Labeler(noise=0.01).rank_with_ties(SUM, outputs, random.Random(seed), tie_margin=0.05)
        by_output = dict(zip(order, tiers))
        assert by_output[0] == by_output[2] != by_output[1]  # two wrong answers: a tie, below the right one
        assert by_output[1] < by_output[3] < by_output[0]  # the long right answer between them
        assert Labeler(noise=0.01).rank_with_ties(SUM, outputs, random.Random(seed), 0.0)[1] == [0, 1, 2, 3]
