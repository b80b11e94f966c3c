"""A small fictional world, generated from a seed, that every instruct text is about: people, towns, animals, things.

The instruction tasks (``tasks.py``), the pretraining corpus and the SFT demonstrations (``corpus.py``) all draw on one
``World``, so that a model can learn facts from the corpus and be asked about them later. It stands in for the web
text and the API prompts of InstructGPT (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155), small on purpose: a
CPU-trained model of a few million parameters must be able to hold all of it.

    >>> world = make_world(seed=0)
    >>> world == make_world(seed=0), len(world.people), len(world.towns)
    (True, 20, 6)

Which texts may be trained on is decided by a hash of the instruction (``split_of``), so that no evaluation prompt
can leak into the corpus or the demonstrations whatever seeds the generators use.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

# Word pools. Short, common words keep the vocabulary small enough for a tokenizer of a few thousand entries.
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "purple")
KINDS = ("frog", "owl", "fox", "cat", "dog", "goat", "duck", "mouse", "bear", "horse", "crow", "hare")
TRAITS = ("wise", "brave", "sleepy", "clever", "shy", "old", "happy", "grumpy", "tiny", "quiet")
JOBS = ("baker", "farmer", "potter", "sailor", "teacher", "weaver", "miner", "doctor", "painter", "smith")
THINGS = ("lamp", "cup", "kite", "drum", "boat", "hat", "bell", "book", "clock", "chair")
ITEMS = ("apples", "coins", "shells", "stamps", "pears", "marbles", "eggs", "books", "nuts", "cards")
RIVERS = ("Silver", "Amber", "Reed", "Swift", "Cold", "Long", "Green", "Stony")
TOWN_HEADS = ("Moss", "Fern", "Stone", "Ash", "Bright", "Oak", "Willow", "Raven", "Clay", "Frost")
TOWN_TAILS = ("brook", "hill", "ford", "field", "wick", "dale", "moor", "port")
SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "da", "po", "ri", "len", "tor", "bel", "an", "os")

# Words that open a request rather than an answer: how a checker or a labeler tells "continuing a list of
# instructions" (what a base model does, Ouyang et al. 2022) from answering one.
INSTRUCTION_OPENERS = ("what", "who", "where", "which", "how", "write", "list", "name", "add", "compute", "reverse",
                       "sort", "spell", "join", "count", "answer", "give", "tell", "find", "multiply", "subtract",
                       "compose", "put")

EVAL_PERCENT = 10  # share of all possible instructions kept for evaluation only


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    population: int


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    job: str
    age: int
    friend: str
    pet: str  # the name of an animal this person keeps


@dataclass(frozen=True)
class Animal:
    name: str
    kind: str
    trait: str
    colour: str
    town: str


@dataclass(frozen=True)
class Thing:
    colour: str
    kind: str
    owner: str

    @property
    def label(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class World:
    seed: int
    towns: tuple[Town, ...]
    people: tuple[Person, ...]
    animals: tuple[Animal, ...]
    things: tuple[Thing, ...]

    def person(self, name: str) -> Person:
        return next(p for p in self.people if p.name == name)

    def animal(self, name: str) -> Animal:
        return next(a for a in self.animals if a.name == name)

    def category(self, name: str) -> tuple[str, ...]:
        """Members of a category that list and formatting tasks ask for: words a checker accepts."""
        return {"animals": KINDS, "colours": COLOURS, "jobs": JOBS, "things": THINGS,
                "towns": tuple(t.name for t in self.towns), "people": tuple(p.name for p in self.people)}[name]


CATEGORIES = ("animals", "colours", "jobs", "things", "towns", "people")


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
        if name not in taken and len(name) >= 3:
            taken.add(name)
            names.append(name)
    return names


def make_world(seed: int = 0, n_people: int = 20, n_towns: int = 6, n_animals: int = 16,
               n_things: int = 20) -> World:
    """One world per seed. Every name is unique, and so is every thing's colour and kind (so "the red lamp" is one
    object), every person's age and every town's population (so comparisons have one answer)."""
    rng = random.Random(f"world:{seed}")
    town_names = rng.sample([h + t for h in TOWN_HEADS for t in TOWN_TAILS], n_towns)
    populations = rng.sample(range(100, 1000, 10), n_towns)
    towns = tuple(Town(name, f"{rng.choice(RIVERS)} River", pop) for name, pop in zip(town_names, populations))
    taken: set[str] = set()
    person_names = _names(rng, n_people, taken)
    animal_names = _names(rng, n_animals, taken)
    animals = tuple(Animal(name, rng.choice(KINDS), rng.choice(TRAITS), rng.choice(COLOURS), rng.choice(town_names))
                    for name in animal_names)
    ages = rng.sample(range(18, 80), n_people)
    pets = [animal_names[i % n_animals] for i in range(n_people)]
    rng.shuffle(pets)
    people = tuple(Person(name, rng.choice(town_names), rng.choice(JOBS), age,
                          rng.choice([q for q in person_names if q != name]), pet)
                   for name, age, pet in zip(person_names, ages, pets))
    labels = rng.sample([(c, k) for c in COLOURS for k in THINGS], n_things)
    things = tuple(Thing(c, k, rng.choice(person_names)) for c, k in labels)
    return World(seed, towns, people, animals, things)


@dataclass(frozen=True)
class Task:
    """One instruction and what a checker needs to score any answer to it (pure data: JSON-able with ``asdict``)."""

    family: str  # arithmetic, word_problem, ... (tasks.FAMILIES)
    kind: str  # the variant within the family: add, reverse, bullets, ...
    instruction: str
    answer: str  # the ideal response, as a demonstration writes it
    steps: tuple[str, ...] = ()  # a worked solution, one sentence a step (multi-step problems)
    keywords: tuple[str, ...] = ()  # family-specific: accepted items, topic words, or the wrong option
    count: int = 0  # items or lines the instruction asks for

    @property
    def split(self) -> str:
        return split_of(self.instruction)


def split_of(instruction: str) -> str:
    """"eval" for a fixed tenth of all instructions, "train" for the rest, by a hash of the text.

    >>> split_of("What is 2 + 2?")
    'train'
    """
    return "eval" if zlib.crc32(instruction.encode()) % 100 < EVAL_PERCENT else "train"


def final_answer(text: str) -> str:
    """The part of a response that states the answer: what follows the last "answer is" (a chain of thought's last
    sentence), else the first non-empty line.

    >>> final_answer("Let's think step by step. 5 + 3 = 8. Therefore, the answer is 8.")
    '8'
    >>> final_answer("Mossbrook.\\nWhere does Kalo live?")
    'Mossbrook'
    """
    found = list(re.finditer(r"answer(?: \(arabic numerals\))? is:?\s*", text, flags=re.IGNORECASE))
    if found:
        text = text[found[-1].end():]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if found:
        line = re.split(r"(?<!\d)\.(?!\d)", line)[0]  # the sentence ends at a full stop that is not a decimal point
    return line.strip().rstrip(".!").strip()


def first_number(text: str) -> int | None:
    """The first integer in a text, or None.

    >>> first_number("about 42 frogs"), first_number("none")
    (42, None)
    """
    found = re.search(r"-?\d+", text)
    return int(found.group()) if found else None


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def looks_like_instruction(line: str) -> bool:
    """True for a line that asks rather than answers: a question, or one opening with a request verb.

    >>> looks_like_instruction("Write a short poem about a wise frog."), looks_like_instruction("A wise frog sat.")
    (True, False)
    """
    line = line.strip().lstrip("-*0123456789. ").strip()
    first = words(line)[:1]
    return line.endswith("?") or (bool(first) and first[0].lower() in INSTRUCTION_OPENERS)
