"""The validation benchmark's task families (docs/validation.md): word-level tasks with a real vocabulary and
genuine branching, so that at k = 16 a student's top-k is not tail noise (the zoo's 29-character vocabulary made
the overlap-ratio, entropy and horizon rules idle).

Every text is a sequence of *pieces*, each one token: a digit (``"7"``, or ``" 7"`` after a space) or a space and a
word (``" bako"``). ``tokenizer()`` splits text back into exactly these pieces (tested), so training encodes by
dictionary lookup. Both families share one tokenizer (each family alone uses more than 256 of its tokens).

    add      ``123 + 567 >``  ->  `` 3 P 7 C 0 G 10 S 2 P 6 C 1 G 9 S 1 P 5 C 0 G 6 S Answer: 690``
             three digit steps right to left; P, C, G, S are connector words, each drawn from the format's 32
             synonyms per slot, and each step names its digits in either order. The student's flaw (the zoo's): a
             4-digit sum's answer drops its leading carry digit with probability ``flaw``.
    lookup   ``price kuto bame lisa >``  ->  `` bame I 5 S kuto I 3 S lisa I 2 S Answer: 352``
             a memorised price table (64 items, prices 1-9); the steps visit the items in any order (6 orders), the
             answer lists the prices in prompt order. The student's flaw: for the 24 hard items its data shows a
             wrong price with probability ``flaw``; a teacher's ``fixed`` items carry no flaw.

A *format* draws each connector slot from the student's synonyms with probability ``mix`` and from another
format's otherwise, per slot: a teacher pretrained on a graded mixture has seen every token the student uses, and
at the student's own connector states it puts about ``mix`` of its mass on the student's words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
GEN = " >"  # the generation prompt the chat template appends
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %} >{% endif %}"
SPLIT = r" ?[0-9]| ?[^ 0-9]+"
ANSWER = " Answer:"
SYNONYMS = 32  # per slot and format (add); lookup uses 48: > 16, so at k = 16 a connector state's top-k is partial


def _words(n: int, seed: int) -> list[str]:
    """n distinct pronounceable pseudo-words (consonant-vowel syllables), deterministic."""
    rng = random.Random(seed)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    out: list[str] = []
    seen = {"answer", "price"}
    while len(out) < n:
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.choice((2, 3))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


_POOL = _words(800, 2604)
# add: slots P, C, G, S x formats (student's "a", other "b"); lookup: slots I, S x formats, and the items
ADD_SLOTS = {f: {s: _POOL[i * SYNONYMS:(i + 1) * SYNONYMS] for i, s in enumerate("PCGS", start=4 * j)}
             for j, f in enumerate("ab")}
_L0 = 8 * SYNONYMS
LOOKUP_SYN = 48
LOOKUP_SLOTS = {f: {s: _POOL[_L0 + i * LOOKUP_SYN:_L0 + (i + 1) * LOOKUP_SYN] for i, s in enumerate("IS", start=2 * j)}
                for j, f in enumerate("ab")}
ITEMS = _POOL[_L0 + 4 * LOOKUP_SYN:_L0 + 4 * LOOKUP_SYN + 64]
_prices = random.Random(13016)
PRICES = {item: _prices.randrange(1, 10) for item in ITEMS}
HARD_ITEMS = tuple(ITEMS[:24])


def wrong_price(item: str) -> int:
    """The flawed data's price for a hard item: a fixed other digit, so the flaw is a consistent belief."""
    return PRICES[item] % 9 + 1


@dataclass(frozen=True)
class Style:
    """How a model's training responses are written: ``mix`` = share of connector slots drawn from the student's
    synonyms; ``flaw`` = probability of the student's error; ``fixed`` = lookup items spared from the flaw."""

    mix: float = 1.0
    flaw: float = 0.0
    fixed: frozenset = frozenset()


def _slot(slots: dict, name: str, style: Style, rng: random.Random) -> str:
    fmt = "a" if style.mix >= 1.0 or rng.random() < style.mix else "b"
    return " " + rng.choice(slots[fmt][name])


def _digits(s: str, lead_space: bool = True) -> list[str]:
    return [(" " if i == 0 and lead_space else "") + c for i, c in enumerate(s)]


class Add:
    name = "add"
    max_new_tokens = 48  # longest response: 3 steps x 9 pieces + " Answer:" + 4 digits + EOS = 33
    train_steps = 800  # 600 left 2 of 6 models unable to add (easy accuracy 0.35-0.50) with 4-digit operands

    @staticmethod
    def problem(rng: random.Random, kind: str) -> tuple[int, int]:
        if kind == "hard":  # a 4-digit sum: the flaw's state
            a = rng.randrange(500, 1000)
            b = rng.randrange(1000 - a, 1000)
            return (a, b) if rng.random() < 0.5 else (b, a)
        return rng.randrange(0, 500), rng.randrange(0, 500)

    @staticmethod
    def prompt(p: tuple[int, int]) -> list[str]:
        a, b = p
        return _digits(f"{a:03d}", False) + [" +"] + _digits(f"{b:03d}")

    @staticmethod
    def answer(p: tuple[int, int]) -> str:
        return str(p[0] + p[1])

    @staticmethod
    def response(p: tuple[int, int], style: Style, rng: random.Random) -> list[str]:
        a, b = p
        out: list[str] = []
        carry = 0
        for x, y in zip(f"{a:03d}"[::-1], f"{b:03d}"[::-1]):
            if rng.random() < 0.5:
                x, y = y, x
            s = int(x) + int(y) + carry
            out += [" " + x, _slot(ADD_SLOTS, "P", style, rng), " " + y, _slot(ADD_SLOTS, "C", style, rng),
                    " " + str(carry), _slot(ADD_SLOTS, "G", style, rng), *_digits(str(s)),
                    _slot(ADD_SLOTS, "S", style, rng)]
            carry = s // 10
        ans = str(a + b)
        if style.flaw > 0 and len(ans) == 4 and rng.random() < style.flaw:
            ans = ans[1:]
        return out + [ANSWER] + _digits(ans)


class Lookup:
    name = "lookup"
    max_new_tokens = 32  # 3 steps x 4 pieces + " Answer:" + 3 digits + EOS = 17
    train_steps = 600

    @staticmethod
    def problem(rng: random.Random, kind: str) -> tuple[str, ...]:
        """Three distinct items; "hard" = exactly one hard item (the flaw's state), "easy" = none."""
        easy = [i for i in ITEMS if i not in HARD_ITEMS]
        if kind == "hard":
            items = [rng.choice(HARD_ITEMS)] + rng.sample(easy, 2)
            rng.shuffle(items)
            return tuple(items)
        return tuple(rng.sample(easy, 3))

    @staticmethod
    def prompt(p: tuple[str, ...]) -> list[str]:
        return [" price"] + [" " + i for i in p]

    @staticmethod
    def answer(p: tuple[str, ...]) -> str:
        return "".join(str(PRICES[i]) for i in p)

    @staticmethod
    def response(p: tuple[str, ...], style: Style, rng: random.Random) -> list[str]:
        values = {}
        for item in p:
            flawed = item in HARD_ITEMS and item not in style.fixed and style.flaw > 0 and rng.random() < style.flaw
            values[item] = wrong_price(item) if flawed else PRICES[item]
        out: list[str] = []
        for item in rng.sample(list(p), len(p)):
            out += [" " + item, _slot(LOOKUP_SLOTS, "I", style, rng), " " + str(values[item]),
                    _slot(LOOKUP_SLOTS, "S", style, rng)]
        return out + [ANSWER] + _digits("".join(str(values[i]) for i in p))


FAMILIES = {"add": Add, "lookup": Lookup}


DIGITS = [str(d) for d in range(10)] + [f" {d}" for d in range(10)]


def _words(slots: dict) -> list[str]:
    return [" " + w for f in slots.values() for ws in f.values() for w in ws]


def pieces_vocab() -> list[str]:
    """Every piece either family can produce, in a fixed order (the tokenizer's vocabulary after the specials)."""
    return DIGITS + [" +", " price", ANSWER, GEN] + _words(ADD_SLOTS) + _words(LOOKUP_SLOTS) + [" " + i for i in ITEMS]


def family_pieces(name: str) -> set[str]:
    """The pieces a family's texts (prompt, generation prompt, response) can contain."""
    own = [" +"] + _words(ADD_SLOTS) if name == "add" else [" price"] + _words(LOOKUP_SLOTS) + [" " + i for i in ITEMS]
    return {*DIGITS, ANSWER, GEN, *own}


def family_tokens(name: str) -> int:
    """How many distinct tokens a family's texts use (the issue asks for >= 256 per family)."""
    return len(family_pieces(name))


def tokenizer():
    """The benchmark's word-level tokenizer (one token per piece), with the chat template above."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK] + pieces_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    hf.chat_template = TEMPLATE
    hf.model_max_length = 128
    return hf
