"""The texts the instruct models learn from: a pretraining corpus about the generated world, and SFT demonstrations.

The corpus mixes what a base model must know and the habits InstructGPT starts from (Ouyang et al. 2022,
https://arxiv.org/abs/2203.02155): facts about the world as articles, tables, Q&A pages and stories; pages that list
instructions without answering them, so that a base model given an instruction continues the list instead of obeying
it; and worked solutions in prose, some opened by "Let's think step by step." and closed by "Therefore, the answer is
N.", the text that lets the zero-shot chain-of-thought prompt of Kojima et al. 2022 (https://arxiv.org/abs/2205.11916)
help a model that has read such text. The corpus only ever shows training-split tasks of training families, and never
the chat format, which only demonstrations teach:

    ### Instruction:
    Write a short poem about a wise frog.
    ### Response:
    There once was a wise frog, ...

``python -m nexttoken.instruct.corpus`` prints one page of every kind.

    >>> corpus = make_corpus(make_world(0), n_chars=20_000, seed=0)
    >>> corpus == make_corpus(make_world(0), n_chars=20_000, seed=0), sum(map(len, corpus.train)) >= 20_000
    (True, True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

from nexttoken.errors import UserError
from nexttoken.instruct.tasks import HELD_OUT_FAMILIES, TRAIN_FAMILIES, sample_task
from nexttoken.instruct.world import Task, World, make_world

INSTRUCTION = "### Instruction:"
RESPONSE = "### Response:"
COT_TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer (arabic numerals) is"  # Kojima et al.'s second-stage prompt for numbers


def chat_prompt(instruction: str) -> str:
    """The prompt of the chat format; the response follows it, then EOS.

    >>> print(chat_prompt("What is 2 + 3?"), end="")
    ### Instruction:
    What is 2 + 3?
    ### Response:
    """
    return f"{INSTRUCTION}\n{instruction}\n{RESPONSE}\n"


def qa_prompt(instruction: str, trigger: str = "") -> str:
    """The Q/A layout of the corpus's worked solutions, optionally ending in a trigger such as ``COT_TRIGGER``.

    >>> qa_prompt("What is 2 + 3?", COT_TRIGGER)
    "Q: What is 2 + 3?\\nA: Let's think step by step."
    """
    return f"Q: {instruction}\nA:" + (f" {trigger}" if trigger else "")


def worked_solution(task: Task, trigger: str = COT_TRIGGER, closing: str = "Therefore, the answer is") -> str:
    """A chain of thought: the trigger, one sentence per step, and the answer.

    >>> worked_solution(Task("arithmetic", "add", "What is 2 + 3?", "5", steps=("2 + 3 = 5.",)))
    "Let's think step by step. 2 + 3 = 5. Therefore, the answer is 5."
    """
    return " ".join(filter(None, (trigger, *task.steps, f"{closing} {task.answer}.")))


# ---- pages: (world, rng) -> text ------------------------------------------------------------------------------------


def _train_task(world: World, rng: random.Random, families: tuple[str, ...] = TRAIN_FAMILIES) -> Task:
    while True:
        task = sample_task(world, rng.choice(families), rng)
        if task.split == "train":
            return task


def person_page(world: World, rng: random.Random) -> str:
    p = rng.choice(world.people)
    pet = world.animal(p.pet)
    owned = [t.label for t in world.things if t.owner == p.name]
    facts = [rng.choice((f"{p.name} lives in {p.town}.", f"{p.name} is from {p.town}.")),
             rng.choice((f"{p.name} is a {p.job}.", f"{p.name} works as a {p.job}.")),
             f"{p.name} is {p.age} years old.",
             rng.choice((f"{p.name}'s friend is {p.friend}.", f"{p.friend} is a friend of {p.name}.")),
             f"{p.name} has a pet {pet.kind} called {pet.name}."]
    facts += [f"{p.name} owns the {label}." for label in owned]
    rest = facts[1:]
    rng.shuffle(rest)  # the same facts in another order on every page, so none is learnt only from its neighbour
    return f"{p.name}\n\n" + " ".join([facts[0], *rest])


def town_page(world: World, rng: random.Random) -> str:
    town = rng.choice(world.towns)
    people = [p.name for p in world.people if p.town == town.name]
    animals = [f"{a.name} the {a.kind}" for a in world.animals if a.town == town.name]
    lines = [f"{town.name} is a town on the {town.river}.", f"About {town.population} people live in {town.name}."]
    if people:
        lines.append(f"People of {town.name}: {', '.join(people)}.")
    if animals:
        lines.append(f"Animals of {town.name}: {', '.join(animals)}.")
    return f"{town.name}\n\n" + " ".join(lines)


def animal_page(world: World, rng: random.Random) -> str:
    a = rng.choice(world.animals)
    keepers = [p.name for p in world.people if p.pet == a.name]
    lines = [f"{a.name} is a {a.trait} {a.kind} from {a.town}.", f"{a.name} is {a.colour}."]
    if keepers:
        lines.append(f"{a.name} is the pet of {' and '.join(keepers)}.")
    return f"{a.name} the {a.kind}\n\n" + " ".join(lines)


def table_page(world: World, rng: random.Random) -> str:
    kind = rng.choice(("people", "animals", "things", "towns"))
    header, rows = {
        "people": (("name", "town", "job", "age"), [(p.name, p.town, p.job, str(p.age)) for p in world.people]),
        "animals": (("name", "kind", "colour", "town"), [(a.name, a.kind, a.colour, a.town) for a in world.animals]),
        "things": (("thing", "owner"), [(t.label, t.owner) for t in world.things]),
        "towns": (("town", "river", "people"), [(t.name, t.river, str(t.population)) for t in world.towns]),
    }[kind]
    rows = rng.sample(rows, min(len(rows), rng.randint(3, 8)))
    return "\n".join([f"Table of {kind}", "", "| " + " | ".join(header) + " |",
                      *("| " + " | ".join(row) + " |" for row in rows)])


def qa_page(world: World, rng: random.Random) -> str:
    tasks = [_train_task(world, rng, ("fact", "fact", "arithmetic", "list_transform", "string_transform"))
             for _ in range(rng.randint(3, 6))]
    title = rng.choice(("Questions and answers", "Quiz", "Answers to common questions"))
    return f"{title}\n\n" + "\n\n".join(f"{qa_prompt(t.instruction)} {t.answer}" for t in tasks)


def story_page(world: World, rng: random.Random) -> str:
    p = rng.choice(world.people)
    friend, pet = world.person(p.friend), world.animal(p.pet)
    thing = rng.choice([t for t in world.things if t.owner == p.name] or world.things)
    sentences = [f"One day {p.name} the {p.job} left {p.town} to visit {friend.name} in {friend.town}.",
                 f"{pet.name}, a {pet.trait} {pet.kind}, came along.",
                 rng.choice((f"{p.name} carried the {thing.label}.", f"On the road they found the {thing.label}, "
                                                                     f"which belongs to {thing.owner}.")),
                 rng.choice((f"{friend.name}, who is {friend.age}, was happy to see them.",
                             f"{friend.name} the {friend.job} made them dinner.")),
                 rng.choice(("They talked until the stars came out.", f"At night {pet.name} slept by the fire.",
                             f"The next day they walked back to {p.town}."))]
    return " ".join(sentences)


def instruction_list_page(world: World, rng: random.Random) -> str:
    """Instructions with no answers: the text that teaches a base model to answer an instruction with another."""
    header = rng.choice(("Practice questions", "Writing prompts for the class", "Homework", "Things to ask a teacher",
                         "Exercises", "Ideas for the next lesson"))
    instructions = [_train_task(world, rng).instruction for _ in range(rng.randint(4, 10))]
    style = rng.choice(("numbered", "dashes", "plain"))
    lines = [f"{i}. {x}" if style == "numbered" else f"- {x}" if style == "dashes" else x
             for i, x in enumerate(instructions, 1)]
    return f"{header}\n\n" + "\n".join(lines)


def worked_solutions_page(world: World, rng: random.Random) -> str:
    """Word problems and sums solved in prose: after the chain-of-thought trigger, as bare steps, or directly."""
    blocks = []
    for _ in range(rng.randint(1, 3)):
        task = _train_task(world, rng, ("word_problem", "word_problem", "arithmetic"))
        style = rng.choice(("cot", "cot", "cot_numerals", "steps", "direct"))
        if style == "cot":
            answer = worked_solution(task)
        elif style == "cot_numerals":
            answer = worked_solution(task, closing=ANSWER_TRIGGER)
        elif style == "steps":
            answer = worked_solution(task, trigger="", closing="So the answer is")
        else:
            answer = f"The answer is {task.answer}."
        blocks.append(f"{qa_prompt(task.instruction)} {answer}")
    return rng.choice(("Worked examples", "Solutions", "Maths practice")) + "\n\n" + "\n\n".join(blocks)


def poem_page(world: World, rng: random.Random) -> str:
    task = _train_task(world, rng, ("poem",))
    trait, kind = task.keywords
    title = rng.choice((f"The {trait.capitalize()} {kind.capitalize()}", f"A poem about a {trait} {kind}"))
    return f"{title}\n\n{task.answer}"


# page kind -> (writer, weight)
PAGES: dict[str, tuple[Callable[[World, random.Random], str], int]] = {
    "person": (person_page, 2), "town": (town_page, 1), "animal": (animal_page, 1), "table": (table_page, 1),
    "qa": (qa_page, 2), "story": (story_page, 2), "instruction_list": (instruction_list_page, 3),
    "worked_solutions": (worked_solutions_page, 3), "poem": (poem_page, 1),
}


def iter_pages(world: World, seed: int = 0) -> Iterator[str]:
    """An endless, seeded stream of pages of every kind, in the proportions of their weights."""
    rng = random.Random(f"corpus:{seed}")
    writers = [w for w, _ in PAGES.values()]
    weights = [k for _, k in PAGES.values()]
    while True:
        yield rng.choices(writers, weights)[0](world, rng)


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]  # pages to pretrain on
    heldout: tuple[str, ...]  # pages never trained on: the likelihood that the alignment tax is measured on


def make_corpus(world: World, n_chars: int = 3_000_000, seed: int = 0, heldout_fraction: float = 0.05) -> Corpus:
    """About ``n_chars`` characters of training pages (each page goes to the held-out split with probability
    ``heldout_fraction``); the same world and seed give the same corpus."""
    if n_chars <= 0 or not 0.0 <= heldout_fraction < 1.0:
        raise UserError(f"corpus needs n_chars > 0 and 0 <= heldout_fraction < 1, not {n_chars}, {heldout_fraction}")
    rng = random.Random(f"heldout:{seed}")
    train: list[str] = []
    heldout: list[str] = []
    size = 0
    for page in iter_pages(world, seed):
        if rng.random() < heldout_fraction:
            heldout.append(page)
        else:
            train.append(page)
            size += len(page)
            if size >= n_chars:
                return Corpus(tuple(train), tuple(heldout))
    raise AssertionError("iter_pages is endless")


@dataclass(frozen=True)
class Demonstration:
    task: Task
    prompt: str  # chat_prompt(task.instruction)
    response: str  # what a labeler would write; EOS is the tokenizer's to add


# What a chatty demonstrator adds after the answer: a follow-up question, off the instruction (the labelers' following
# criterion counts it against the answer) and long (so is their brevity).
CHATTY_ENDINGS = ("I hope this helps! Would you like me to explain how I got it?",
                  "Is there anything else you would like to know about it?",
                  "Let me know if you need more help. Shall I give you another example?",
                  "That was a fun one! Do you want me to try a harder question?")


def demonstrations(world: World, n: int, seed: int = 0, families: tuple[str, ...] = TRAIN_FAMILIES,
                   cot_fraction: float = 0.0, chatty: float = 0.0) -> list[Demonstration]:
    """``n`` (prompt, response) pairs of training-split tasks, the families taking turns. Word problems are answered
    with their worked solution with probability ``cot_fraction``, else with the number alone. A share ``chatty`` of
    the responses, like those of some of InstructGPT's contractors, follow the answer with a friendly follow-up
    question (``CHATTY_ENDINGS``) that the labelers rank below the bare answer; the tasks and answers do not depend on
    ``chatty``."""
    held_out = sorted(set(families) & set(HELD_OUT_FAMILIES))
    if held_out:
        raise UserError(f"{', '.join(held_out)} held out for evaluation; demonstrations cannot use them")
    if not 0.0 <= chatty <= 1.0:
        raise UserError(f"chatty is a share of the demonstrations, in [0, 1], not {chatty}")
    rng, style = random.Random(f"demonstrations:{seed}"), random.Random(f"demonstrators:{seed}")
    demos = []
    for i in range(n):
        task = _train_task(world, rng, (families[i % len(families)],))
        response = worked_solution(task) if task.steps and rng.random() < cot_fraction else task.answer
        if style.random() < chatty:
            response += "\n" + style.choice(CHATTY_ENDINGS)
        demos.append(Demonstration(task, chat_prompt(task.instruction), response))
    return demos


if __name__ == "__main__":  # print a sample of every page kind: python -m nexttoken.instruct.corpus
    sample_world, sample_rng = make_world(0), random.Random(0)
    for name, (writer, _) in PAGES.items():
        print(f"==== {name}\n{writer(sample_world, sample_rng)}\n")
