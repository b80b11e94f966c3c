"""The equation tables of Power et al.: every `a op b = c` over Z_p or the permutation group S5.

Each operation is one pure function in a registry. A model reads the four tokens `a op b =` and is scored on `c`
only. Elements are tokens 0..n-1 (residues, or S5 permutations in lexicographic order); the `op` and `=` tokens follow.

    nexttoken grok table --op x/y --p 7      # print the whole table to check the data

S5 products compose right to left, as functions: (x*y)(i) = x(y(i)). A permutation is written as its five images,
`01234` being the identity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from nexttoken.errors import UserError

PERMS = list(itertools.permutations(range(5)))  # S5 in lexicographic order; index = token
PERM_INDEX = {p: i for i, p in enumerate(PERMS)}


def compose(a: tuple, b: tuple) -> tuple:
    """(a*b)(i) = a(b(i)).

    >>> compose((1, 0, 2, 3, 4), (0, 2, 1, 3, 4))
    (1, 2, 0, 3, 4)
    """
    return tuple(a[b[i]] for i in range(len(b)))


def inverse(a: tuple) -> tuple:
    out = [0] * len(a)
    for i, ai in enumerate(a):
        out[ai] = i
    return tuple(out)


def inv_mod(y: int, p: int) -> int:
    """y^-1 mod a prime p, by Fermat: y^(p-2). True division, not multiplication.

    >>> inv_mod(3, 7)
    5
    """
    return pow(y, p - 2, p)


# Modular operations: (x, y, p) -> c. One line each, the paper's definitions.
MODULAR: dict[str, Callable[[int, int, int], int]] = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * inv_mod(y, p)) % p,
    "x/y if y odd else x-y": lambda x, y, p: (x * inv_mod(y, p)) % p if y % 2 else (x - y) % p,
    "x^2+y^2": lambda x, y, p: (x**2 + y**2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x**2 + x * y + y**2 + x) % p,
    "x^3+xy": lambda x, y, p: (x**3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}
DIVISION = {"x/y"}  # y runs over 1..p-1 and p must be prime; "x/y if y odd" only divides by odd y != 0 (p prime)
NEEDS_PRIME = {"x/y", "x/y if y odd else x-y"}

# Operations on S5: (x, y) -> x op y, permutations as tuples.
PERMUTATION: dict[str, Callable[[tuple, tuple], tuple]] = {
    "s5:x*y": lambda x, y: compose(x, y),
    "s5:x*y*x^-1": lambda x, y: compose(compose(x, y), inverse(x)),
    "s5:x*y*x": lambda x, y: compose(compose(x, y), x),
}

OPERATIONS = [*MODULAR, *PERMUTATION]


def vocab_size(op: str, p: int) -> int:
    """Tokens of an operation's table without building it: the elements, then `op` and `=`."""
    return (len(PERMS) if op.startswith("s5:") else p) + 2


def table_size(op: str, p: int) -> int:
    """Equations in an operation's table without building it.

    >>> table_size("x+y", 97), table_size("x/y", 97), table_size("s5:x*y", 97)
    (9409, 9312, 14400)
    """
    if op.startswith("s5:"):
        return len(PERMS) ** 2
    return p * (p - 1) if op in DIVISION else p * p


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def element_name(op: str, token: int) -> str:
    return "".join(map(str, PERMS[token])) if op.startswith("s5:") else str(token)


@dataclass(frozen=True)
class Table:
    """All equations of one operation: inputs (N, 4) = `a op b =` tokens, answers (N,) = `c` tokens."""

    op: str
    p: int  # modulus (or 120 for S5: the number of elements)
    inputs: torch.Tensor
    answers: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return self.p + 2  # elements, then `op`, then `=`

    def __len__(self) -> int:
        return len(self.answers)

    def element_name(self, token: int) -> str:
        return element_name(self.op, token)

    def lines(self):
        for (a, _, b, _), c in zip(self.inputs.tolist(), self.answers.tolist()):
            yield f"{self.element_name(a)} {self.op.removeprefix('s5:')} {self.element_name(b)} = {self.element_name(c)}"


def check_op(op: str, p: int) -> None:
    if op not in OPERATIONS:
        raise UserError(f"unknown operation {op!r}; choose one of: {', '.join(OPERATIONS)}")
    if op in MODULAR:
        if p < 2:
            raise UserError(f"modulus must be at least 2, not {p}")
        if op in NEEDS_PRIME and not is_prime(p):
            raise UserError(f"{op} needs a prime modulus (division is defined only mod a prime); {p} is not prime")


def equations(op: str, p: int = 97) -> Iterator[tuple[int, int, int]]:
    """Every equation of ``op`` as tokens (a, b, c), in table order, one at a time.

    >>> list(equations("x-y", 2))
    [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    """
    check_op(op, p)
    if op in MODULAR:
        fn = MODULAR[op]
        for x in range(p):
            for y in range(1 if op in DIVISION else 0, p):
                yield x, y, fn(x, y, p)
    else:
        fn = PERMUTATION[op]
        for x, y in itertools.product(PERMS, PERMS):
            yield PERM_INDEX[x], PERM_INDEX[y], PERM_INDEX[fn(x, y)]


def lines(op: str, p: int = 97) -> Iterator[str]:
    """The table as text, `a op b = c` per line, without holding it in memory (for tables of any size)."""
    name = op.removeprefix("s5:")
    for a, b, c in equations(op, p):
        yield f"{element_name(op, a)} {name} {element_name(op, b)} = {element_name(op, c)}"


def make_table(op: str, p: int = 97) -> Table:
    """The whole table of ``op`` (mod ``p``; ``p`` is ignored for S5 operations)."""
    abc = torch.tensor(list(equations(op, p)), dtype=torch.long).view(-1, 3)
    n = len(PERMS) if op in PERMUTATION else p
    op_tok, eq_tok = n, n + 1
    inputs = torch.stack([abc[:, 0], torch.full_like(abc[:, 0], op_tok), abc[:, 1], torch.full_like(abc[:, 0], eq_tok)], 1)
    return Table(op, n, inputs, abc[:, 2].clone())


# Peak host memory of ``make_table`` per equation with a margin (Python tuples while the table is built, then the
# tensors), and of the table once built: what a run's memory check counts.
BUILD_BYTES_PER_ROW = 240
TABLE_BYTES_PER_ROW = 5 * 8


def split(n: int, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a random training fraction and the rest (validation); the same seed gives the same split."""
    if not 0.0 < frac < 1.0:
        raise UserError(f"training fraction must be strictly between 0 and 1, not {frac}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, min(n - 1, round(frac * n)))
    return order[:n_train], order[n_train:]
