"""Regenerate the shipped prompt sets in sample_prompts/ (deterministic; stdlib only).

    python scripts/make_sample_prompts.py [--out-dir sample_prompts]

Math answers are computed in code from the numbers that go into each question, so they are
correct by construction. Tests rerun ``main`` and compare bytes with the shipped files.
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

SUFFIX = "Show your reasoning step by step, then give the final answer on the last line as 'Answer: <number>'."
PER_KIND = 15  # 8 kinds x 15 = 120 math prompts
NAMES = ["Maya", "Leo", "Aisha", "Tom", "Priya", "Carlos", "Mei", "Omar", "Sara", "Jonas", "Nia", "Ravi"]
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"),
         ("sandwich", "sandwiches"), ("candle", "candles"), ("mug", "mugs"), ("toy car", "toy cars")]


def hours(n: int) -> str:
    return f"{n} hour" if n == 1 else f"{n} hours"


# Each generator returns (question, answer). Answers are ints or Fractions; never floats.


def shopping(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    (_, a_pl), (_, b_pl) = rng.sample(ITEMS, 2)
    a, b = rng.randint(2, 6), rng.randint(2, 6)
    p, q = rng.randint(2, 12), rng.randint(1, 9)
    total = a * p + b * q
    bill = next(x for x in (20, 50, 100, 200) if x > total)
    return (f"{name} buys {a} {a_pl} at ${p} each and {b} {b_pl} at ${q} each. "
            f"{name} pays with a ${bill} bill. How many dollars of change does {name} get?", bill - total)


def rates(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.5:
        v, t, w, u = rng.randint(4, 12) * 10, rng.randint(1, 4), rng.randint(3, 9) * 10, rng.randint(1, 3)
        return (f"A train travels at {v} km/h for {hours(t)}, then at {w} km/h for {hours(u)}. "
                f"How many kilometers does it travel in total?", v * t + w * u)
    r, m, start = rng.randint(3, 15), rng.randint(4, 20), rng.randint(1, 5) * 10
    cap = start + r * m
    return (f"A tank holds {cap} liters and already contains {start} liters. A pump adds {r} liters per minute. "
            f"How many minutes until the tank is full?", m)


def remainders(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(100, 999), rng.randint(7, 23)
        return f"What is the remainder when {a} is divided by {b}?", a % b
    if kind == 1:
        n, k = rng.randint(40, 150), rng.randint(4, 9)
        return (f"A school has {n} students. They are split into teams of exactly {k}. "
                f"How many students are left without a team?", n % k)
    d = rng.randint(10, 200)
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    start = rng.randrange(7)
    # Ask for a count (not a day name) so the answer stays a number.
    return (f"Today is {days[start]}. Counting Monday as day 1 and Sunday as day 7, "
            f"which day number of the week will it be {d} days from today?", (start + d) % 7 + 1)


def percentages(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.5:
        d = rng.choice([10, 20, 25, 50])
        price = rng.randint(2, 20) * 20  # multiples of 20 keep every discount a whole number
        extra = rng.randint(2, 9)
        assert price * (100 - d) % 100 == 0
        return (f"A jacket costs ${price}. It is on sale for {d}% off, and then a ${extra} coupon is applied. "
                f"What is the final price in dollars?", price * (100 - d) // 100 - extra)
    pct = rng.choice([5, 10, 15, 20, 30, 40, 60, 75])
    n = rng.randint(2, 30) * 20  # multiples of 20 keep every listed percentage a whole number
    assert n * pct % 100 == 0
    return (f"A farm has {n} animals, and {pct}% of them are sheep. The rest are goats. "
            f"How many goats are on the farm?", n - n * pct // 100)


def sequences(rng: random.Random) -> tuple[str, int]:
    a, d = rng.randint(1, 20), rng.randint(2, 9)
    first = ", ".join(str(a + i * d) for i in range(4))
    if rng.random() < 0.5:
        n = rng.randint(10, 30)
        return f"The sequence {first}, ... increases by the same amount each time. What is term number {n}?", a + (n - 1) * d
    n = rng.randint(5, 12)
    return (f"The sequence {first}, ... increases by the same amount each time. "
            f"What is the sum of its first {n} terms?", n * (2 * a + (n - 1) * d) // 2)


def algebra(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(3)
    if kind == 0:
        x, a, b = rng.randint(-12, 25), rng.randint(2, 9), rng.randint(1, 40)
        return f"Solve for x: {a}x + {b} = {a * x + b}. What is x?", x
    if kind == 1:
        big, small = rng.randint(20, 80), rng.randint(2, 19)
        return (f"Two numbers add up to {big + small}, and their difference is {big - small}. "
                f"What is the larger number?", big)
    son, k, y = rng.randint(4, 15), rng.randint(2, 4), rng.randint(2, 10)
    return (f"A mother is {k} times as old as her son. The son is {son} years old. "
            f"How old will the mother be in {y} years?", k * son + y)


def fractions(rng: random.Random) -> tuple[str, Fraction]:
    while True:
        p, q = Fraction(1, rng.randint(2, 8)), Fraction(rng.randint(1, 3), rng.randint(4, 9))
        left = 1 - p - q
        if 0 < left < 1:
            break
    a, b = rng.sample(NAMES, 2)
    return (f"{a} eats {p} of a pizza and {b} eats {q} of it. What fraction of the pizza is left? "
            f"Give the answer as a fraction in lowest terms.", left)


def multistep(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    boxes, per, broken, sold = rng.randint(3, 9), rng.randint(6, 24), rng.randint(1, 5), rng.randint(2, 10)
    total = boxes * per - broken
    sold = min(sold, total - 1)
    return (f"{name} has {boxes} boxes with {per} eggs in each. {broken} eggs break and {name} sells {sold}. "
            f"How many eggs are left?", total - sold)


KINDS = [shopping, rates, remainders, percentages, sequences, algebra, fractions, multistep]


def math_records(seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    seen: set[str] = set()
    # Round-robin over kinds, so any prefix (e.g. --limit 16) is a varied mix.
    for _ in range(PER_KIND):
        for kind in KINDS:
            question, answer = kind(rng)
            while question in seen:  # deterministic retry keeps every prompt distinct
                question, answer = kind(rng)
            seen.add(question)
            records.append({"id": f"math-{len(records):03d}", "prompt": f"{question} {SUFFIX}", "answer": str(answer)})
    return records


SYSTEM = "You are a helpful, concise assistant."
INSTRUCT = [
    "Explain why the sky is blue in three sentences.",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "List five tips for getting better sleep.",
    "Write a short email to a coworker asking to move our meeting from Tuesday to Thursday.",
    "Compare cats and dogs as pets in a few sentences.",
    "Give me advice on preparing for a job interview.",
    "Explain what a hash table is to a beginner programmer.",
    "Write a haiku about autumn leaves.",
    "What are the main causes of inflation? Answer briefly.",
    "Describe how to make a cup of tea, step by step.",
    "Summarise the benefits of regular exercise in four bullet points.",
    "Write a polite message declining an invitation to a party.",
    "Explain the difference between weather and climate.",
    "List three pros and three cons of working from home.",
    "Give a short explanation of how vaccines work.",
    "Suggest a name for a small coffee shop and explain your choice.",
    "Explain recursion using a simple example.",
    "Write a two-sentence horror story.",
    "What should I pack for a weekend hiking trip? Give a short list.",
    "Compare trains and planes for a 500 km trip.",
    "Explain what photosynthesis is in simple words.",
    "Write a short thank-you note to a teacher.",
    "Give three ideas for a rainy-day activity with children.",
    "Explain the rules of tic-tac-toe.",
    "Summarise the idea of supply and demand in two sentences.",
    "List four ways to reduce plastic waste at home.",
    "Write a short product description for a reusable water bottle.",
    "Explain what a budget is and why it helps.",
    "Give advice to someone learning to cook for the first time.",
    "Describe the water cycle in a short paragraph.",
    "Write a limerick about a cat who loves boxes.",
    "Explain the difference between a virus and a bacterium.",
    "List the planets of the solar system in order from the Sun.",
    "Write a short email to a landlord reporting a leaking tap.",
    "Compare reading a paper book with reading an e-book.",
    "Explain what an API is using a restaurant analogy.",
]
# Chat-format entries exercise the 'messages' path, with and without a system message.
INSTRUCT_CHAT = [
    [("system", SYSTEM), ("user", "Explain how a bicycle gear system works.")],
    [("system", SYSTEM), ("user", "Give me three tips for learning a new language.")],
    [("system", SYSTEM), ("user", "Summarise why bees are important for agriculture.")],
    [("system", SYSTEM), ("user", "Write a short birthday message for my grandmother.")],
    [("system", "You are a friendly travel guide."), ("user", "What should a first-time visitor do in a big city?")],
    [("system", "You are a patient math tutor."), ("user", "Explain what a prime number is, with examples.")],
    [("system", "You answer in exactly three bullet points."), ("user", "Why is drinking water important?")],
    [("system", SYSTEM), ("user", "Compare renting and buying a home.")],
    [("user", "I have eggs, spinach and cheese. Suggest a quick breakfast.")],
    [("user", "Write a short apology email for missing a deadline.")],
    [("user", "What is a good way to start a short speech?"),
     ("assistant", "Open with a question or a brief story that connects to your topic."),
     ("user", "Give me an example opening for a talk about recycling.")],
    [("system", SYSTEM), ("user", "Explain the difference between RAM and storage.")],
    [("system", "You are a careful editor."), ("user", "Rewrite this more clearly: 'me and him goes to the shop yesterday'.")],
    [("user", "List five healthy snacks.")],
]


def instruct_records() -> list[dict]:
    records: list[dict] = [{"prompt": p} for p in INSTRUCT]
    records += [{"messages": [{"role": r, "content": c} for r, c in chat]} for chat in INSTRUCT_CHAT]
    return [{"id": f"instruct-{i:03d}", **r} for i, r in enumerate(records)]


def write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_bytes(text.encode("utf-8"))  # bytes: identical output on every OS (no CRLF)


def main(out_dir: str | Path = Path(__file__).resolve().parent.parent / "sample_prompts") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    math = math_records(seed=0)
    tiny = [{**r, "id": f"tiny-{i}"} for i, r in enumerate(math[:8])]  # one of each kind
    files = {"math.jsonl": math, "instruct.jsonl": instruct_records(), "tiny.jsonl": tiny}
    for name, records in files.items():
        write_jsonl(out / name, records)
    return [out / name for name in files]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=None, help="default: sample_prompts/ next to scripts/")
    args = parser.parse_args()
    for p in main(args.out_dir) if args.out_dir else main():
        print(p)
