import re

import pytest

from nexttoken.errors import UserError
from nexttoken.instruct.corpus import (ANSWER_TRIGGER, CHATTY_ENDINGS, COT_TRIGGER, INSTRUCTION, RESPONSE,
                                       chat_prompt, demonstrations, make_corpus, qa_prompt)
from nexttoken.instruct.labeler import HELD_OUT_LABELER, labeler_panel
from nexttoken.instruct.tasks import HELD_OUT_FAMILIES, TRAIN_FAMILIES, make_tasks, score
from nexttoken.instruct.world import looks_like_instruction, make_world, split_of

WORLD = make_world(0)
CORPUS = make_corpus(WORLD, n_chars=200_000, seed=0)
# Openings that only held-out families' instructions have.
HELD_OUT_OPENINGS = ("How many letters", "How many times does", "How many words", "Who is older", "Which is larger",
                     "Which town has more")


def instructions_in(page: str) -> list[str]:
    """The instruction of every Q/A block, and every line of an instruction list (its header excluded)."""
    found = re.findall(r"^Q: (.*)$", page, flags=re.MULTILINE)
    body = page.split("\n\n", 1)[-1].splitlines()
    if body and all(looks_like_instruction(line) for line in body):
        found += [re.sub(r"^(\d+\. |- )", "", line) for line in body]
    return found


def test_corpus_is_seeded_and_sized():
    assert CORPUS == make_corpus(WORLD, n_chars=200_000, seed=0)
    assert CORPUS != make_corpus(WORLD, n_chars=200_000, seed=1)
    size = sum(map(len, CORPUS.train))
    assert 200_000 <= size < 200_000 + max(map(len, CORPUS.train))
    # Held-out pages are about 5% of all pages and none is also a training page (beyond chance repeats of short ones).
    assert 0.02 < len(CORPUS.heldout) / (len(CORPUS.train) + len(CORPUS.heldout)) < 0.09
    long_heldout = {p for p in CORPUS.heldout if len(p) > 300}
    assert long_heldout and not long_heldout & set(CORPUS.train)


def test_corpus_lists_instructions_without_answering_them():
    lists = [p for p in CORPUS.train if "A:" not in p and len(instructions_in(p)) >= 4]
    assert len(lists) > 0.1 * len(CORPUS.train)
    # An instruction in such a list is followed by another instruction: the base model's habit to be unlearnt.
    assert any("Write a short poem about a" in p or "Write a poem about a" in p for p in lists)


def test_corpus_has_correct_step_by_step_solutions():
    solutions = re.findall(rf"Q: (.*)\nA: {re.escape(COT_TRIGGER)} (.*)", "\n\n".join(CORPUS.train))
    assert len(solutions) > 50
    closings = {"Therefore, the answer is": 0, ANSWER_TRIGGER: 0}
    for question, reasoning in solutions:
        last_step, answer = re.search(r"= (\d+)\. (?:Therefore, the answer.*) (\d+)\.$", reasoning).groups()
        assert last_step == answer
        closings[next(c for c in closings if c in reasoning)] += 1
    assert all(closings.values())  # both closings, so Kojima's second-stage prompt has been read too
    assert "The answer is" in "".join(CORPUS.train)  # and problems answered directly, without steps


def test_corpus_shows_only_training_instructions_and_never_the_chat_format():
    instructions = [x for page in CORPUS.train + CORPUS.heldout for x in instructions_in(page)]
    assert len(instructions) > 1000
    assert all(split_of(x) == "train" for x in instructions)
    text = "\n".join(CORPUS.train + CORPUS.heldout)
    assert not any(opening in text for opening in HELD_OUT_OPENINGS)
    assert INSTRUCTION not in text and RESPONSE not in text
    evaluation = make_tasks(WORLD, 200, seed=0, families=("word_problem",), split="eval")
    assert not any(t.instruction in text for t in evaluation)


def test_corpus_knows_the_world():
    text = "\n".join(CORPUS.train)
    for person in WORLD.people:
        assert f"{person.name} is {person.age} years old." in text or f"| {person.name} | {person.town} |" in text


def test_demonstrations_are_chat_formatted_ideal_responses_of_training_tasks():
    demos = demonstrations(WORLD, 140, seed=0)
    assert demos == demonstrations(WORLD, 140, seed=0) and demos != demonstrations(WORLD, 140, seed=1)
    assert {d.task.family for d in demos} == set(TRAIN_FAMILIES)
    for demo in demos:
        assert demo.task.family not in HELD_OUT_FAMILIES and demo.task.split == "train"
        assert demo.prompt == chat_prompt(demo.task.instruction) and demo.prompt.endswith(f"{RESPONSE}\n")
        assert demo.response == demo.task.answer and score(demo.task, demo.response) == 1.0
        assert not any(opening in demo.prompt for opening in HELD_OUT_OPENINGS)


def test_chatty_demonstrators_keep_the_tasks_and_answers_and_lose_to_the_bare_answer():
    clean, chatty = demonstrations(WORLD, 200, seed=0), demonstrations(WORLD, 200, seed=0, chatty=0.5)
    assert [d.task for d in chatty] == [d.task for d in clean]
    padded = [(c, d) for c, d in zip(clean, chatty) if c.response != d.response]
    assert 70 <= len(padded) <= 130
    for c, d in padded:
        answer, ending = d.response.rsplit("\n", 1)
        assert answer == c.response and ending in CHATTY_ENDINGS
        for labeler in (HELD_OUT_LABELER, *labeler_panel()):  # every labeler, whatever its weights
            assert labeler.utility(c.task, c.response) - labeler.utility(d.task, d.response) > 0.09
    mean_gap = sum(HELD_OUT_LABELER.utility(c.task, c.response) - HELD_OUT_LABELER.utility(d.task, d.response)
                   for c, d in padded) / len(padded)
    assert mean_gap > 0.3
    with pytest.raises(UserError, match="chatty"):
        demonstrations(WORLD, 5, chatty=1.5)


def test_demonstrations_can_reason_step_by_step_and_refuse_held_out_families():
    demos = demonstrations(WORLD, 20, seed=0, families=("word_problem",), cot_fraction=1.0)
    assert all(d.response.startswith(COT_TRIGGER) and score(d.task, d.response) == 1.0 for d in demos)
    for family in HELD_OUT_FAMILIES:
        with pytest.raises(UserError, match="held out"):
            demonstrations(WORLD, 5, families=("arithmetic", family))
    with pytest.raises(UserError):
        make_corpus(WORLD, n_chars=0)


def test_prompt_layouts():
    assert qa_prompt("What is 1 + 1?") == "Q: What is 1 + 1?\nA:"
    assert chat_prompt("Name two towns.") == "### Instruction:\nName two towns.\n### Response:\n"
