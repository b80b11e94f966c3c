"""Simulated labelers that rank a prompt's outputs, noisily and with disagreement, as AlpacaFarm simulates annotators.

InstructGPT's reward model learns from people who rank K outputs of a prompt (Ouyang et al. 2022,
https://arxiv.org/abs/2203.02155); AlpacaFarm (Dubois et al. 2023, https://arxiv.org/abs/2305.14387) replaces them by
simulated annotators whose noise and mutual disagreement are chosen on purpose, since perfectly consistent preferences
make the reward model's job unrealistically easy. Here a labeler scores an output by a utility, a weighted sum of
correctness (the task's checker), instruction following (answering, not continuing a list of instructions or starting
a new turn) and brevity, adds Gaussian noise to each utility it reads, and reverses a judgement with probability
``flip``. Outputs whose noisy utilities lie within a margin of each other are called a tie, as a person asked to rank
answers that are equally wrong would say; tied pairs carry no preference to learn. A panel of labelers with different
weights, noise and seeds makes the training rankings; a held-out labeler (``HELD_OUT_LABELER``) judges final win
rates, so no policy is scored by the labelers it was trained to please.

    >>> task = Task("arithmetic", "add", "What is 2 + 3?", "5")
    >>> outputs = ["What is 4 + 4?", "5", "6", "The sum of the two numbers is 5."]
    >>> Labeler(noise=0.0).rank(task, outputs, random.Random(0))
    [1, 3, 2, 0]
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from nexttoken.errors import UserError
from nexttoken.instruct.corpus import INSTRUCTION, RESPONSE
from nexttoken.instruct.tasks import score
from nexttoken.instruct.world import Task, looks_like_instruction, words


def following(task: Task, output: str) -> float:
    """How far an output answers the instruction: 0 when empty, when it opens a new chat turn, or when its first line
    is another instruction (a base model continuing the list); else the share of its lines that answer.

    >>> task = Task("fact", "job", "What is Kalo's job?", "baker")
    >>> following(task, "Kalo is a baker."), following(task, "What is Mira's job?\\nWho is Kalo's friend?")
    (1.0, 0.0)
    """
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if not lines or INSTRUCTION in output or RESPONSE in output or looks_like_instruction(lines[0]):
        return 0.0
    return sum(not looks_like_instruction(ln) for ln in lines) / len(lines)


def brevity(task: Task, output: str) -> float:
    """1 up to a few words longer than the reference answer, then falling as the reference's share of the length.

    >>> task = Task("arithmetic", "add", "What is 2 + 3?", "5")
    >>> brevity(task, "5"), brevity(task, "The answer is 5, because two and three make five when added.")
    (1.0, 0.4166666666666667)
    """
    allowed = len(words(task.answer)) + 4
    return min(1.0, allowed / max(1, len(words(output))))


@dataclass(frozen=True)
class Labeler:
    name: str = "labeler"
    seed: int = 0  # seeds the labeler's own judgements (win_rate); rank and prefer take the caller's rng
    noise: float = 0.1  # standard deviation of the Gaussian noise added to every utility the labeler reads
    flip: float = 0.0  # probability that a judgement (or each adjacent pair of a ranking) is reversed at random
    correctness: float = 1.0  # weights of the three criteria in the utility
    instruction_following: float = 0.5
    concision: float = 0.25

    def __post_init__(self) -> None:
        if self.noise < 0 or not 0.0 <= self.flip <= 1.0:
            raise UserError(f"labeler {self.name}: noise must be >= 0 and flip in [0, 1], not {self.noise}, "
                            f"{self.flip}")

    def utility(self, task: Task, output: str) -> float:
        """The noiseless worth of an output to this labeler.

        >>> task = Task("arithmetic", "add", "What is 2 + 3?", "5")
        >>> Labeler().utility(task, "5"), Labeler().utility(task, "6")
        (1.75, 0.75)
        """
        return (self.correctness * score(task, output) + self.instruction_following * following(task, output)
                + self.concision * brevity(task, output))

    def rank(self, task: Task, outputs: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of ``outputs``, best first: by noisy utility (exact ties in random order), then each adjacent pair
        swapped with probability ``flip``, walking from the best down."""
        return self.rank_with_ties(task, outputs, rng, tie_margin=0.0)[0]

    def rank_with_ties(self, task: Task, outputs: Sequence[str], rng: random.Random, tie_margin: float
                       ) -> tuple[list[int], list[int]]:
        """(order, tiers): ``rank``'s order, and for each of its places a tier number, shared by outputs the labeler
        calls equally good: a tier holds the outputs whose noisy utilities lie within ``tie_margin`` of its best one
        (a flip still swaps two places, tiers stay with the places).

        >>> task = Task("arithmetic", "add", "What is 2 + 3?", "5")
        >>> Labeler(noise=0.0).rank_with_ties(task, ["6", "5", "7"], random.Random(0), tie_margin=0.1)[1]
        [0, 1, 1]
        """
        noisy = [self.utility(task, out) + (rng.gauss(0.0, self.noise) if self.noise else 0.0) for out in outputs]
        tie_break = [rng.random() for _ in outputs]
        order = sorted(range(len(outputs)), key=lambda i: (-noisy[i], tie_break[i]))
        tiers, top = [], None
        for i in order:
            new = top is None or tie_margin <= 0 or noisy[top] - noisy[i] >= tie_margin
            top = i if new else top  # the best output of the current tier
            tiers.append(tiers[-1] + new if tiers else 0)
        for i in range(len(order) - 1):
            if self.flip and rng.random() < self.flip:
                order[i], order[i + 1] = order[i + 1], order[i]
        return order, tiers

    def prefer(self, task: Task, a: str, b: str, rng: random.Random) -> int:
        """0 when this labeler prefers ``a``, 1 when it prefers ``b`` (a ranking of two).

        >>> task = Task("fact", "job", "What is Kalo's job?", "baker")
        >>> Labeler(noise=0.0).prefer(task, "What is Mira's job?", "baker", random.Random(0))
        1
        """
        return self.rank(task, [a, b], rng)[0]

    def judge(self, task: Task, a: str, b: str, rng: random.Random) -> float:
        """1 when ``a`` wins, 0 when ``b`` wins, 0.5 for a tie: the same text, or, for a labeler without noise, equal
        utilities (a noisy labeler, like the held-out one, picks between different texts of equal utility)."""
        if a.strip() == b.strip() or (self.noise == 0 and self.utility(task, a) == self.utility(task, b)):
            return 0.5
        return 1.0 - self.prefer(task, a, b, rng)


def win_rate(tasks: Sequence[Task], outputs_a: Sequence[str], outputs_b: Sequence[str], labeler: Labeler) -> float:
    """Share of tasks where the labeler prefers output a to output b, ties counting half; seeded by the labeler.

    >>> tasks = [Task("arithmetic", "add", "What is 2 + 3?", "5"), Task("arithmetic", "add", "What is 1 + 1?", "2")]
    >>> win_rate(tasks, ["5", "2"], ["6", "2"], Labeler(noise=0.0))
    0.75
    """
    if not (len(tasks) == len(outputs_a) == len(outputs_b)) or not tasks:
        raise UserError(f"win rate needs one output of each model per task, got {len(tasks)} tasks, "
                        f"{len(outputs_a)} and {len(outputs_b)} outputs")
    rng = random.Random(f"win_rate:{labeler.seed}")
    return sum(labeler.judge(t, a, b, rng) for t, a, b in zip(tasks, outputs_a, outputs_b)) / len(tasks)


def labeler_panel(n: int = 4, seed: int = 0, noise: float = 0.1, flip: float = 0.05) -> tuple[Labeler, ...]:
    """``n`` labelers who disagree: each weighs following and brevity differently (within +-40%), and has its own
    noise (0.5x to 1.5x ``noise``) and seed.

    >>> [labeler.name for labeler in labeler_panel(2)]
    ['labeler0', 'labeler1']
    """
    rng = random.Random(f"panel:{seed}")
    return tuple(Labeler(f"labeler{i}", seed=rng.randrange(2**31), noise=noise * rng.uniform(0.5, 1.5), flip=flip,
                         instruction_following=0.5 * rng.uniform(0.6, 1.4), concision=0.25 * rng.uniform(0.6, 1.4))
                 for i in range(n))


# Judges final win rates only: its seed, noise and weights differ from every panel labeler's.
HELD_OUT_LABELER = Labeler("held_out", seed=20_220_304, noise=0.05, flip=0.02, instruction_following=0.6,
                           concision=0.2)
