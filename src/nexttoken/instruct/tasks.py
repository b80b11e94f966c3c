"""Instruction task families over a generated world, each a generator and a pure checker that scores any answer.

A checker maps (task, answer text) to a score in [0, 1]; it reads what a response states (``world.final_answer``), so
"42", "The answer is 42." and a chain of thought ending in "Therefore, the answer is 42." score alike. Families in
``HELD_OUT_FAMILIES`` never reach a demonstration or the corpus: they measure how instruction following generalises
to kinds of instruction never demonstrated, as InstructGPT's held-out prompts do (Ouyang et al. 2022,
https://arxiv.org/abs/2203.02155). Word problems take 2-4 steps, so that writing the steps out can help (Kojima et
al. 2022, https://arxiv.org/abs/2205.11916).

    >>> from nexttoken.instruct.world import make_world
    >>> world = make_world(0)
    >>> task = sample_task(world, "arithmetic", random.Random(1))
    >>> task.instruction, task.answer, score(task, task.answer), score(task, "7")
    ('What is 36 + 48?', '84', 1.0, 0.0)
"""

from __future__ import annotations

import random
import re
from typing import Callable

from nexttoken.errors import UserError
from nexttoken.instruct.world import (CATEGORIES, COLOURS, ITEMS, JOBS, KINDS, THINGS, TRAITS, Task, World,
                                      final_answer, first_number, looks_like_instruction, words)

NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


def _pick(rng: random.Random, *templates: str) -> str:
    return rng.choice(templates)


# ---- generators: (world, rng) -> Task ----------------------------------------------------------------------------


def arithmetic(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("add", "sub", "mul"))
    if kind == "add":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        c, text = a + b, _pick(rng, f"What is {a} + {b}?", f"Add {a} and {b}.", f"Compute {a} + {b}.")
    elif kind == "sub":
        a = rng.randint(1, 99)
        b = rng.randint(0, a)
        c, text = a - b, _pick(rng, f"What is {a} - {b}?", f"Subtract {b} from {a}.", f"What is {a} minus {b}?")
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c, text = a * b, _pick(rng, f"What is {a} * {b}?", f"Multiply {a} by {b}.", f"What is {a} times {b}?")
    sign = {"add": "+", "sub": "-", "mul": "*"}[kind]
    return Task("arithmetic", kind, text, str(c), steps=(f"{a} {sign} {b} = {c}.",))


def word_problem(world: World, rng: random.Random) -> Task:
    """2-4 operations on one person's count of something; every intermediate count stays within 0..99."""
    name, other = (p.name for p in rng.sample(world.people, 2))
    item = rng.choice(ITEMS)
    value = rng.randint(2, 20)
    story, steps = [f"{name} has {value} {item}."], [f"{name} starts with {value} {item}."]
    n_ops = rng.randint(2, 4)
    for _ in range(n_ops):
        options = ["buy", "get"] if value < 90 else []
        options += ["give", "lose"] if value > 1 else []
        options += ["double"] if 0 < value <= 40 else []
        op = rng.choice(options)
        if op in ("buy", "get"):
            k = rng.randint(1, min(9, 99 - value))
            story.append(f"{name} buys {k} more." if op == "buy" else f"{other} gives {name} {k} more.")
            steps.append(f"{name} gets {k} more, so {value} + {k} = {value + k}.")
            value += k
        elif op in ("give", "lose"):
            k = rng.randint(1, min(9, value - 1))
            story.append(f"{name} gives {k} to {other}." if op == "give" else f"{name} loses {k}.")
            steps.append(f"{name} has {k} fewer, so {value} - {k} = {value - k}.")
            value -= k
        else:
            story.append(f"Then {name} doubles the number of {item}.")
            steps.append(f"Doubling gives {value} * 2 = {value * 2}.")
            value *= 2
    story.append(f"How many {item} does {name} have now?")
    return Task("word_problem", f"{n_ops}-step", " ".join(story), str(value), steps=tuple(steps))


def _word_pool(rng: random.Random) -> tuple[str, ...]:
    return rng.choice((KINDS, COLOURS, THINGS, JOBS, TRAITS))


def list_transform(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("reverse", "sort_words", "sort_numbers", "max"))
    n = rng.randint(3, 5)
    if kind in ("reverse", "sort_words"):
        items = rng.sample(_word_pool(rng), n)
        out = items[::-1] if kind == "reverse" else sorted(items)
        text = (_pick(rng, "Reverse the list: {}.", "Write these words in reverse order: {}.") if kind == "reverse"
                else _pick(rng, "Sort these words alphabetically: {}.", "Put these words in alphabetical order: {}."))
    else:
        numbers = rng.sample(range(1, 100), n)
        items = [str(x) for x in numbers]
        out = [str(x) for x in sorted(numbers)] if kind == "sort_numbers" else [str(max(numbers))]
        text = ("Sort these numbers from smallest to largest: {}." if kind == "sort_numbers"
                else "What is the largest number in this list: {}?")
    return Task("list_transform", kind, text.format(", ".join(items)), ", ".join(out), count=len(out))


def string_transform(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("upper", "backwards", "initials", "join"))
    phrase = [rng.choice(TRAITS), rng.choice(COLOURS), rng.choice(KINDS)]
    if kind == "upper":
        source = " ".join(phrase[rng.randint(0, 2):])
        text, out = _pick(rng, f"Write {source} in capital letters.", f"Write in upper case: {source}."), source.upper()
    elif kind == "backwards":
        source = rng.choice(_word_pool(rng))
        text, out = _pick(rng, f"Spell {source} backwards.", f"Write the word {source} backwards."), source[::-1]
    elif kind == "initials":
        text, out = f"Write the first letter of each word: {' '.join(phrase)}.", "".join(w[0] for w in phrase)
    else:
        text, out = f"Join these words with dashes: {' '.join(phrase)}.", "-".join(phrase)
    return Task("string_transform", kind, text, out)


def formatting(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("bullets", "numbered", "commas", "one_word"))
    if kind == "one_word":
        person, animal = rng.choice(world.people), rng.choice(world.animals)
        question, out = rng.choice(((f"what kind of animal is {animal.name}?", animal.kind),
                                    (f"what is {person.name}'s job?", person.job),
                                    (f"where does {person.name} live?", person.town)))
        return Task("formatting", kind, f"Answer in one word: {question}", out)
    category = rng.choice(CATEGORIES)
    n = rng.randint(2, 4)
    items = rng.sample(world.category(category), n)
    count_word = NUMBER_WORDS[n]
    if kind == "bullets":
        text, out = f"List {count_word} {category} as a bulleted list.", "\n".join(f"- {x}" for x in items)
    elif kind == "numbered":
        text, out = (f"Name {count_word} {category} in a numbered list.",
                     "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1)))
    else:
        text, out = f"Name {count_word} {category}, separated by commas.", ", ".join(items)
    return Task("formatting", kind, text, out, keywords=world.category(category), count=n)


def counting(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("letters", "occurrences", "words"))
    if kind == "letters":
        word = rng.choice(_word_pool(rng))
        text, out = f"How many letters are in the word {word}?", len(word)
    elif kind == "occurrences":
        pool = rng.sample(KINDS, 3)
        items = [rng.choice(pool) for _ in range(rng.randint(4, 7))]
        text, out = f"How many times does {pool[0]} appear in this list: {', '.join(items)}?", items.count(pool[0])
    else:
        animal = rng.choice(world.animals)
        sentence = f"The {animal.trait} {animal.kind} sat in {animal.town}" + rng.choice(("", " all day", " at night"))
        text, out = f"How many words are in this sentence: {sentence}.", len(sentence.split())
    return Task("counting", kind, text, str(out))


def _by(first_wins: bool, first: str, second: str) -> tuple[str, str]:
    return (first, second) if first_wins else (second, first)


def compare(world: World, rng: random.Random) -> Task:
    kind = rng.choice(("older", "bigger", "larger"))
    # The options keep the order they were drawn in, so the right one is first only half of the time.
    if kind == "older":
        p, q = rng.sample(world.people, 2)
        text, right, wrong = f"Who is older, {p.name} or {q.name}?", *_by(p.age > q.age, p.name, q.name)
    elif kind == "bigger":
        s, t = rng.sample(world.towns, 2)
        text = f"Which town has more people, {s.name} or {t.name}?"
        right, wrong = _by(s.population > t.population, s.name, t.name)
    else:
        a, b = rng.sample(range(1, 100), 2)
        text, right, wrong = f"Which is larger, {a} or {b}?", *_by(a > b, str(a), str(b))
    return Task("compare", kind, text, right, keywords=(wrong,))


def fact(world: World, rng: random.Random) -> Task:
    p, a, t, town = (rng.choice(world.people), rng.choice(world.animals), rng.choice(world.things),
                     rng.choice(world.towns))
    kind, text, out = rng.choice((
        ("lives", f"Where does {p.name} live?", p.town),
        ("job", f"What is {p.name}'s job?", p.job),
        ("pet", f"What is the name of {p.name}'s pet?", p.pet),
        ("friend", f"Who is {p.name}'s friend?", p.friend),
        ("age", f"How old is {p.name}?", str(p.age)),
        ("kind", f"What kind of animal is {a.name}?", a.kind),
        ("colour", f"What colour is {a.name} the {a.kind}?", a.colour),
        ("owner", f"Who owns the {t.label}?", t.owner),
        ("river", f"Which river flows through {town.name}?", town.river),
        ("population", f"How many people live in {town.name}?", str(town.population)),
    ))
    return Task("fact", kind, text, out)


POEM_OPENINGS = ("A {trait} {kind} lived in {town},", "There once was a {trait} {kind},",
                 "By the river sat a {trait} {kind},", "In {town} there lived a {trait} {kind},")
POEM_MIDDLES = ("it sang all day long,", "it dreamed under the moon,", "it watched the {colour} sky,",
                "it slept in the morning rain,", "it danced by the old mill,", "it counted the {colour} stars,")
POEM_ENDINGS = ("and the night was long and still.", "and every {kind} knew its name.",
                "and the {colour} leaves fell down.", "and the wind sang back to it.",
                "and it was {trait} to the end.")


def poem(world: World, rng: random.Random) -> Task:
    trait, kind, colour, town = rng.choice(TRAITS), rng.choice(KINDS), rng.choice(COLOURS), rng.choice(world.towns)
    text = _pick(rng, f"Write a short poem about a {trait} {kind}.", f"Write a poem about a {trait} {kind}.",
                 f"Compose a short poem about a {trait} {kind}.")
    lines = [rng.choice(POEM_OPENINGS), *rng.sample(POEM_MIDDLES, 2), rng.choice(POEM_ENDINGS)]
    out = "\n".join(line.format(trait=trait, kind=kind, colour=colour, town=town.name) for line in lines)
    return Task("poem", "poem", text, out, keywords=(trait, kind), count=4)


# ---- checkers: (task, text) -> score in [0, 1] -------------------------------------------------------------------


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, flags=re.IGNORECASE) is not None


def check_number(task: Task, text: str) -> float:
    """1 when the first number of the stated answer is the reference.

    >>> task = Task("arithmetic", "add", "What is 2 + 3?", "5")
    >>> check_number(task, "2 + 3 = 5. Therefore, the answer is 5."), check_number(task, "What is 4 + 4?")
    (1.0, 0.0)
    """
    return float(first_number(final_answer(text)) == int(task.answer))


def check_short_answer(task: Task, text: str) -> float:
    """1 when the stated answer is short (at most 8 words) and names the reference: "Mossbrook." or "Kalo lives in
    Mossbrook." but not a list of every town.

    >>> task = Task("fact", "lives", "Where does Kalo live?", "Mossbrook")
    >>> check_short_answer(task, "Kalo lives in Mossbrook."), check_short_answer(task, "Where does Mira live?")
    (1.0, 0.0)
    """
    if task.answer.isdigit():
        return check_number(task, text)
    stated = final_answer(text)
    return float(len(words(stated)) <= 8 and _has_word(stated, task.answer))


def _items(stated: str) -> list[str]:
    return [x.strip().lower() for x in stated.split(",") if x.strip()]


def check_items(task: Task, text: str) -> float:
    """Share of positions holding the right item, over the longer of the two lists.

    >>> task = Task("list_transform", "reverse", "Reverse the list: a, b, c.", "c, b, a", count=3)
    >>> check_items(task, "c, b, a"), check_items(task, "c, a, b")
    (1.0, 0.3333333333333333)
    """
    got, want = _items(final_answer(text)), _items(task.answer)
    return sum(g == w for g, w in zip(got, want)) / max(len(got), len(want))


def check_exact(task: Task, text: str) -> float:
    """1 for exactly the reference string (case matters only when the task is about case).

    >>> task = Task("string_transform", "upper", "Write frog in capital letters.", "FROG")
    >>> check_exact(task, "FROG"), check_exact(task, "frog")
    (1.0, 0.0)
    """
    stated = final_answer(text)
    return float(stated == task.answer if task.kind == "upper" else stated.lower() == task.answer.lower())


def check_format(task: Task, text: str) -> float:
    """For lists: distinct accepted items in the asked layout, over the larger of the asked and given counts. For "in
    one word": 1 for the right single word, 0.5 for the right word among a few.

    >>> task = Task("formatting", "bullets", "List two animals as a bulleted list.", "- frog\\n- owl",
    ...             keywords=("frog", "owl", "fox"), count=2)
    >>> check_format(task, "- fox\\n- owl"), check_format(task, "fox, owl"), check_format(task, "- fox\\n- fox\\n- owl")
    (1.0, 0.0, 0.6666666666666666)
    """
    if task.kind == "one_word":
        stated = final_answer(text)
        if stated.lower() == task.answer.lower():
            return 1.0
        return 0.5 if check_short_answer(task, text) else 0.0
    if task.kind == "commas":
        given = [x.strip() for x in final_answer(text).split(",") if x.strip()]
        items = given
    else:
        given = [line.strip() for line in text.strip().splitlines() if line.strip()]
        markers = [f"{i}. " if task.kind == "numbered" else "- " for i in range(1, len(given) + 1)]
        items = [line[len(m):].strip() for line, m in zip(given, markers) if line.startswith(m)]
    accepted = {k.lower() for k in task.keywords}
    good = {x.lower().rstrip(".") for x in items} & accepted
    return min(len(good), task.count) / max(task.count, len(given))


def check_compare(task: Task, text: str) -> float:
    """1 when the stated answer names the right option and not the other.

    >>> task = Task("compare", "larger", "Which is larger, 3 or 7?", "7", keywords=("3",))
    >>> check_compare(task, "7"), check_compare(task, "3 or 7")
    (1.0, 0.0)
    """
    stated = final_answer(text)
    return float(_has_word(stated, task.answer) and not _has_word(stated, task.keywords[0]))


def check_poem(task: Task, text: str) -> float:
    """Form times topic: 3-8 short lines that answer rather than ask (form 1; 2 lines or long lines: 0.5), scaled
    by the share of topic words used (half credit for a poem off the topic).

    >>> task = Task("poem", "poem", "Write a short poem about a wise frog.", "", keywords=("wise", "frog"), count=4)
    >>> check_poem(task, "A wise frog sat on a stone,\\nit sang all day,\\nit slept at night,\\nand it was alone.")
    1.0
    >>> check_poem(task, "Write a short poem about a brave fox.\\nWrite a story about a cat.")
    0.0
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not looks_like_instruction(ln)]
    if len(lines) < 2:
        return 0.0
    short = all(len(words(ln)) <= 12 for ln in lines)
    form = 1.0 if 3 <= len(lines) <= 8 and short else 0.5
    topic = sum(_has_word(" ".join(lines), k) for k in task.keywords) / len(task.keywords)
    return form * (0.5 + 0.5 * topic)


# family -> (generator, checker)
FAMILIES: dict[str, tuple[Callable[[World, random.Random], Task], Callable[[Task, str], float]]] = {
    "arithmetic": (arithmetic, check_number),
    "word_problem": (word_problem, check_number),
    "list_transform": (list_transform, check_items),
    "string_transform": (string_transform, check_exact),
    "formatting": (formatting, check_format),
    "fact": (fact, check_short_answer),
    "poem": (poem, check_poem),
    "counting": (counting, check_number),
    "compare": (compare, check_compare),
}
HELD_OUT_FAMILIES = ("counting", "compare")
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in HELD_OUT_FAMILIES)


def score(task: Task, text: str) -> float:
    """The checker of the task's family applied to an answer: a score in [0, 1].

    >>> score(Task("fact", "job", "What is Kalo's job?", "baker"), "Kalo is a baker.")
    1.0
    """
    return FAMILIES[task.family][1](task, text)


def sample_task(world: World, family: str, rng: random.Random) -> Task:
    if family not in FAMILIES:
        raise UserError(f"unknown task family {family!r}; choose from: {', '.join(FAMILIES)}")
    return FAMILIES[family][0](world, rng)


def make_tasks(world: World, n: int, seed: int, families: tuple[str, ...] = TRAIN_FAMILIES, split: str = "train",
               unique: bool = True) -> list[Task]:
    """``n`` tasks of the given split ("train" or "eval"), the families taking turns; the same seed gives the same
    list. ``unique`` forbids repeated instructions (evaluation sets); small families may then run out."""
    if split not in ("train", "eval"):
        raise UserError(f"split must be train or eval, not {split!r}")
    rng = random.Random(f"tasks:{seed}:{split}")
    tasks: list[Task] = []
    seen: set[str] = set()
    for i in range(n):
        family = families[i % len(families)]
        for _ in range(2000):
            task = sample_task(world, family, rng)
            if task.split == split and not (unique and task.instruction in seen):
                break
        else:
            raise UserError(f"family {family} has too few distinct {split} tasks for {n} tasks; ask for fewer")
        seen.add(task.instruction)
        tasks.append(task)
    return tasks
