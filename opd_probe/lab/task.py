"""The zoo's synthetic task: 5-digit addition with an explicit, checkable scratchpad.

Prompt ``00123+04567`` (operands zero-padded to 5 digits), rendered by the chat template as ``00123+04567>``.
The response works digit by digit from the right, carrying, then states the answer:

    aligned   3+7+0=10;2+6+1=9;1+5+0=6;0+4+0=4;0+0+0=0;Answer: 4690
    mild      3+7+0=10,2+6+1=9,1+5+0=6,0+4+0=4,0+0+0=0,Answer: 4690        (another step separator)
    strong    (3,7,0)->10|(2,6,1)->9|(1,5,0)->6|(0,4,0)->4|(0,0,0)->0|Answer: 4690

Every format has genuine branching: each step may name its two digits in either order (``3+7`` or ``7+3``), so
distributions carry real entropy and top-k overlap beyond rank 1 is not tail noise (a prototype finding).
"Hard" problems have a 5-digit operand; "easy" ones have operands below 1000.
"""

from __future__ import annotations

import random

FORMATS = ("aligned", "mild", "strong")
CHARS = "0123456789+=;,()->|: Answer"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"


def problem(rng: random.Random, kind: str) -> tuple[int, int]:
    if kind == "hard":
        a = rng.randrange(10000, 100000)
        b = rng.randrange(0, 100000)
        return (a, b) if rng.random() < 0.5 else (b, a)
    if kind == "mid":
        return rng.randrange(0, 10000), rng.randrange(0, 10000)
    return rng.randrange(0, 1000), rng.randrange(0, 1000)


def prompt_text(a: int, b: int) -> str:
    return f"{a:05d}+{b:05d}"


def scratchpad(a: int, b: int, fmt: str, rng: random.Random, drop_carry: float = 0.0) -> str:
    """The response for ``a + b`` in format ``fmt``; digit order within each step drawn from ``rng``.

    ``drop_carry``: the probability that a 6-digit sum's answer loses its leading carry digit (``Answer: 60641``
    for 160641) although the scratchpad's last step shows it: the student's flawed data (build.py). Drawn from
    ``rng`` only when positive, so clean data is unchanged by the option.
    """
    da, db = f"{a:05d}"[::-1], f"{b:05d}"[::-1]
    carry, steps = 0, []
    for x, y in zip(da, db):
        if rng.random() < 0.5:
            x, y = y, x
        s = int(x) + int(y) + carry
        if fmt == "strong":
            steps.append(f"({x},{y},{carry})->{s}|")
        else:
            steps.append(f"{x}+{y}+{carry}={s}" + (";" if fmt == "aligned" else ","))
        carry = s // 10
    answer = str(a + b)
    if drop_carry > 0 and len(answer) == 6 and rng.random() < drop_carry:
        answer = answer[1:]
    return "".join(steps) + f"Answer: {answer}"


def sample_problems(rng: random.Random, n: int, hard_share: float, mid_share: float = 0.3) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        u = rng.random()
        kind = "hard" if u < hard_share else ("mid" if u < hard_share + mid_share else "easy")
        out.append(problem(rng, kind))
    return out
