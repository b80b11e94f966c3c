import random
import re
from dataclasses import asdict

import pytest

from nexttoken.errors import UserError
from nexttoken.instruct.tasks import (FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES, make_tasks, sample_task,
                                      score)
from nexttoken.instruct.world import Task, final_answer, looks_like_instruction, make_world, split_of

WORLD = make_world(0)


def tasks_of(family: str, n: int = 60, seed: int = 0) -> list[Task]:
    rng = random.Random(seed)
    return [sample_task(WORLD, family, rng) for _ in range(n)]


def near_miss(task: Task) -> str:
    """An answer that is almost right: one off, one item out of place, the wrong option, the wrong layout."""
    if task.answer.isdigit():
        return str(int(task.answer) + 1)
    if task.family == "list_transform":
        items = task.answer.split(", ")
        return ", ".join(items[1:] + items[:1])
    if task.family == "string_transform":
        return task.answer.lower() if task.kind == "upper" else task.answer + "x"
    if task.family == "formatting":
        if task.kind == "one_word":
            return "nobody"
        items = [line.split(" ", 1)[1] for line in task.answer.splitlines()] if "\n" in task.answer else None
        return ", ".join(items) if items else "\n".join(f"- {x}" for x in task.answer.split(", "))
    if task.family == "compare":
        return task.keywords[0]
    if task.family == "poem":
        trait, kind = task.keywords
        return task.answer.replace(trait, "merry").replace(kind, "lamb")
    return "nobody"


# ---- the world ------------------------------------------------------------------------------------------------------


def test_world_is_a_function_of_its_seed_and_its_facts_are_unambiguous():
    assert make_world(0) == WORLD and make_world(1) != WORLD
    names = [p.name for p in WORLD.people] + [a.name for a in WORLD.animals]
    assert len(set(names)) == len(names)
    assert len({t.label for t in WORLD.things}) == len(WORLD.things)
    assert len({p.age for p in WORLD.people}) == len(WORLD.people)
    assert len({t.population for t in WORLD.towns}) == len(WORLD.towns)
    towns = {t.name for t in WORLD.towns}
    for p in WORLD.people:
        assert p.town in towns and p.friend != p.name and WORLD.person(p.friend) and WORLD.animal(p.pet)


# ---- tasks and checkers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_checker_gives_the_reference_full_marks_and_a_near_miss_less(family):
    for task in tasks_of(family):
        assert score(task, task.answer) == 1.0, task
        assert score(task, near_miss(task)) < 1.0, (task, near_miss(task))
        assert score(task, "I do not know.") == 0.0, task
        assert 0.0 <= score(task, task.instruction) <= 1.0


@pytest.mark.parametrize("family", ["arithmetic", "word_problem", "fact", "compare", "counting"])
def test_a_chain_of_thought_ending_in_the_answer_scores_like_the_answer(family):
    for task in tasks_of(family, 20):
        assert score(task, f"Let's think step by step. Something. Therefore, the answer is {task.answer}.") == 1.0


def test_chain_of_thought_reads_the_first_number_after_the_trigger_as_kojima_did(monkeypatch):
    from nexttoken.instruct import evaluate

    tasks = tasks_of("word_problem", 2)
    said = [f"{t.answer}. The answer is {int(t.answer) + 1}" for t in tasks]  # a model that runs on past its answer
    monkeypatch.setattr(evaluate, "_greedy", lambda policy, prompts, *a, **k: said)
    monkeypatch.setattr(evaluate, "warn_if_cut", lambda *a: None)  # no model here to measure the prompts with
    result = evaluate.chain_of_thought(None, tasks, evaluate.EvalConfig())
    assert result.direct == result.step_by_step == 1.0


def test_word_problem_answers_recomputed_from_the_text():
    ops = {"buys (\\d+) more": lambda v, k: v + k, "gives \\w+ (\\d+) more": lambda v, k: v + k,
           "gives (\\d+) to": lambda v, k: v - k, "loses (\\d+)": lambda v, k: v - k,
           "doubles": lambda v, k: v * 2}
    for task in tasks_of("word_problem", 200):
        sentences = task.instruction.split(". ")
        value = int(re.search(r"has (\d+)", sentences[0]).group(1))
        n_ops = 0
        for sentence in sentences[1:-1]:
            pattern = next(p for p in ops if re.search(p, sentence))
            found = re.search(pattern, sentence)
            value = ops[pattern](value, int(found.group(1)) if found.groups() else 0)
            n_ops += 1
            assert 0 <= value <= 99
        assert str(value) == task.answer and task.kind == f"{n_ops}-step" and 2 <= n_ops <= 4
        assert len(task.steps) == n_ops + 1 and task.steps[-1].endswith(f"= {value}.")


def test_arithmetic_list_and_counting_answers_recomputed_from_the_text():
    for task in tasks_of("arithmetic", 100):
        a, b = map(int, re.findall(r"\d+", task.instruction))
        if task.instruction.startswith("Subtract"):
            a, b = b, a
        assert int(task.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[task.kind]
    for task in tasks_of("list_transform", 100):
        items = task.instruction.split(": ")[1].rstrip(".?").split(", ")
        expected = {"reverse": lambda: items[::-1], "sort_words": lambda: sorted(items),
                    "sort_numbers": lambda: sorted(items, key=int), "max": lambda: [max(items, key=int)]}[task.kind]()
        assert task.answer == ", ".join(expected)
    for task in tasks_of("counting", 100):
        if task.kind == "letters":
            assert int(task.answer) == len(task.instruction.rstrip("?").split()[-1])
        elif task.kind == "words":
            assert int(task.answer) == len(task.instruction.split(": ")[1].rstrip(".").split())


def test_fact_answers_agree_with_the_world():
    people = {p.name: p for p in WORLD.people}
    for task in tasks_of("fact", 200):
        if task.kind in ("lives", "job", "age"):
            name = re.search(r"(?:does|is|old is) (\w+)", task.instruction).group(1)
            person = people[name]
            assert task.answer == str({"lives": person.town, "job": person.job, "age": person.age}[task.kind])


def test_final_answer_reads_the_last_stated_answer():
    assert final_answer("Step 1: 2 + 2 = 4. The answer is 4. Therefore, the answer (arabic numerals) is 5.\n") == "5"
    assert final_answer("\n\n  baker \nnext line") == "baker"
    assert final_answer("the answer is 3.5 metres. More.") == "3.5 metres"
    assert final_answer("") == ""


def test_instructions_are_told_from_answers():
    assert looks_like_instruction("3. Sort these words alphabetically: a, b.")
    assert looks_like_instruction("Belne has 4 apples. How many apples does Belne have now?")
    assert not looks_like_instruction("- frog") and not looks_like_instruction("42")


# ---- task sets ------------------------------------------------------------------------------------------------------


def test_families_split_into_train_and_held_out():
    assert set(TRAIN_FAMILIES) | set(HELD_OUT_FAMILIES) == set(FAMILIES)
    assert not set(TRAIN_FAMILIES) & set(HELD_OUT_FAMILIES) and HELD_OUT_FAMILIES


def test_task_sets_are_seeded_split_by_instruction_and_never_overlap():
    train = make_tasks(WORLD, 90, seed=0)
    assert train == make_tasks(WORLD, 90, seed=0) and train != make_tasks(WORLD, 90, seed=1)
    evaluation = make_tasks(WORLD, 90, seed=0, families=tuple(FAMILIES), split="eval")
    assert all(t.split == "train" for t in train) and all(split_of(t.instruction) == "eval" for t in evaluation)
    assert not {t.instruction for t in train} & {t.instruction for t in evaluation}
    assert len({t.instruction for t in evaluation}) == 90
    assert [t.family for t in evaluation[:len(FAMILIES)]] == list(FAMILIES)  # families take turns
    assert asdict(train[0])["instruction"] == train[0].instruction  # tasks are plain data


def test_bad_task_requests_are_user_errors():
    with pytest.raises(UserError, match="unknown task family"):
        sample_task(WORLD, "sonnets", random.Random(0))
    with pytest.raises(UserError, match="too few distinct"):
        make_tasks(WORLD, 100, seed=0, families=("fact",), split="eval")
    with pytest.raises(UserError, match="split"):
        make_tasks(WORLD, 1, seed=0, split="test")
