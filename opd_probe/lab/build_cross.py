"""The zoo's cross-tokenizer teachers: `python -m opd_probe.lab.build_cross [--out DIR]`.

Two teachers of the zoo's addition task (task.py) under a *coarser* tokenizer than the zoo's character one: the
characters plus whole pieces the scratchpad repeats ("Answer: ", and each step's carry "+0=", "+1=").
The characters keep the zoo's ids and the pieces are added: a superset vocabulary whose tokenizer cuts a response
into fewer, longer tokens (on the student's ids such a teacher reads splits it never produces; docs/cross-tokenizer.md):

    aligned-coarse   the `aligned` recipe (same data and seed, twice the steps) under the coarse tokenizer: the
                     student's scratchpad and the aligned teacher's knowledge -> should read as highly compatible
    strong-coarse    the `strong` recipe (another scratchpad notation) under the coarse tokenizer -> should not

Each is asserted on the zoo's held-out problems before saving (bf16, like the zoo). docs/cross-tokenizer.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from ..zoo import ZOO_MODELS
from .build import HARD_SHARE, RECIPES, STEPS, heldout
from .task import CHARS, TEMPLATE, prompt_text, sample_problems, scratchpad
from .train import EOS, PAD, new_model, save, train

CROSS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "cross"
# Only pieces that leave digits single: a first build that also merged the two-digit strings "10".."19" (so
# "00123" read 0|0|12|3) left the teachers unable to read their operands (held-out hard accuracy 0.005).
PIECES = ["Answer: ", "+0=", "+1="]
# name: (scratchpad format, the zoo recipe whose data, seed and steps it reuses)
CROSS_RECIPES = {"aligned-coarse": ("aligned", "aligned"), "strong-coarse": ("strong", "strong")}
# Twice the zoo's steps: with 600, the coarse tokenizer's other initialisation (3 more embedding rows) left the
# strong recipe unable to read its operands (hard 0.01, easy 0.11) and the aligned one at hard 0.585; the zoo saw
# the same fragility with one seed of the same-recipe teacher (build.py)
CROSS_STEPS = 2 * STEPS

# The benchmark family (benchmarks/cross/family/, docs/cross-tokenizer.md): new teachers, none of them seen by the
# pilot. Tokenizer "b" merges other strings than the pilot's: "=" with a sum's leading 1, and the strong notation's
# arrow; like PIECES, none of them can match inside a prompt, so every teacher reads its operands digit by digit.
PIECES_B = ["Answer: ", "=1", "->", "->1"]
FAMILY_MODELS = Path(__file__).resolve().parents[2] / "benchmarks" / "cross" / "family" / "models"
# name: (format ("mixed": aligned or strong per problem), drop carry (the student's flaw), seed, pieces)
FAMILY_RECIPES = {
    "aligned-a7": ("aligned", 0.0, 7, PIECES),
    "aligned-b8": ("aligned", 0.0, 8, PIECES_B),
    # seed 9 left mild unable to learn hard problems (hard 0.41 < the student's 0.47 + 0.1; the role check)
    "mild-a13": ("mild", 0.0, 13, PIECES),
    # seed 10 left the mixed teacher at hard 0.44 (< the student's 0.47 + 0.1; the role check)
    "mixed-b14": ("mixed", 0.0, 14, PIECES_B),
    "same-a11": ("aligned", 0.7, 11, PIECES),  # the student's own data: no knowledge the student lacks
    "strong-b12": ("strong", 0.0, 12, PIECES_B),
}


def make_coarse_tokenizer(pieces: list[str] = PIECES):
    """WordLevel over the zoo's characters and ``pieces``; a regex split takes the longest piece wherever one
    starts."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([PAD, EOS] + sorted(set(CHARS)) + pieces)}
    pattern = "|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True)) + "|."
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.chat_template = TEMPLATE
    hf.model_max_length = 128
    return hf


def _batches(tok, fmt: str, drop_carry: float = 0.0):
    """Training batches in ``fmt``; "mixed" draws aligned or strong per problem."""
    def batch(rng: random.Random, n: int):
        out = []
        for a, b in sample_problems(rng, n, HARD_SHARE):
            prompt = tok.encode(prompt_text(a, b) + ">", add_special_tokens=False)
            f = rng.choice(("aligned", "strong")) if fmt == "mixed" else fmt
            resp = tok.encode(scratchpad(a, b, f, rng, drop_carry), add_special_tokens=False) + [tok.eos_token_id]
            out.append((prompt, resp))
        return out
    return batch


@torch.no_grad()
def coarse_accuracy(model, tok, problems) -> float:
    """Greedy answer accuracy; prompts grouped by token length (the coarse tokenizer's lengths vary)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, max_new_tokens=80, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    groups: dict[int, list] = {}
    for a, b in problems:
        ids = tok.encode(prompt_text(a, b) + ">", add_special_tokens=False)
        groups.setdefault(len(ids), []).append((a, b, ids))
    correct = 0
    for items in groups.values():
        ids = torch.tensor([x[2] for x in items])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        for (a, b, _), row in zip(items, out[:, ids.shape[1]:].tolist()):
            text = tok.decode(row, skip_special_tokens=True)
            correct += "Answer: " in text and text.rsplit("Answer: ", 1)[-1].strip() == str(a + b)
    return correct / len(problems)


def _train_models(recipes: dict, out: Path, log) -> tuple[dict, dict]:
    """Train ``recipes`` (name -> (format, drop carry, seed, pieces)) into bf16 folders under ``out``;
    held-out (hard, easy) accuracy and training seconds per model."""
    torch.set_num_threads(2)  # fixed, as build.py: the thread count changes float rounding
    hard, easy = heldout()
    for stale in [d for d in out.iterdir() if d.is_dir() and d.name not in recipes]:  # a dropped recipe's model
        shutil.rmtree(stale)
    acc, seconds = {}, {}
    for name, (fmt, drop, seed, pieces) in recipes.items():
        record = {"recipe": [fmt, drop, seed, pieces], "steps": CROSS_STEPS, "torch": torch.__version__}
        done = out / name / "build.json"
        if done.exists() and json.loads(done.read_text())["record"] == record:  # an interrupted build's model
            kept = json.loads(done.read_text())
            acc[name], seconds[name] = kept["heldout_accuracy"], kept["train_seconds"]
            log(f"kept {name} from the interrupted build (same recipe)")
            continue
        tok = make_coarse_tokenizer(pieces)
        t0 = time.perf_counter()
        log(f"training {name}: format={fmt} drop_carry={drop} seed={seed} steps={CROSS_STEPS} pieces={pieces}")
        model = new_model(tok, seed)
        train(model, tok, _batches(tok, fmt, drop), CROSS_STEPS, seed=seed, log=log)
        acc[name] = {"hard": coarse_accuracy(model, tok, hard), "easy": coarse_accuracy(model, tok, easy)}
        seconds[name] = time.perf_counter() - t0
        log(f"  {name}: hard {acc[name]['hard']:.3f} easy {acc[name]['easy']:.3f} ({seconds[name]:.0f} s)")
        save(model.to(torch.bfloat16), tok, out / name)
        done.write_text(json.dumps({"record": record, "heldout_accuracy": acc[name], "train_seconds": seconds[name]}))
    return acc, seconds


def _replace(out: Path, fill) -> dict:
    """Build into OUT.tmp with ``fill(tmp) -> manifest``, then swap it in (a failed build leaves OUT as it was,
    and OUT.tmp's finished models for the next build to keep when their recipe is unchanged)."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = fill(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def _student_hard() -> float:
    return json.loads((ZOO_MODELS / "manifest.json").read_text())["heldout_accuracy"]["student"]["hard"]


def build(out: Path = CROSS_DIR, log=print) -> dict:
    """The zoo's two cross-tokenizer teachers (CROSS_RECIPES) -> ``out``."""
    recipes = {n: (fmt, 0.0, RECIPES[base][2], PIECES) for n, (fmt, base) in CROSS_RECIPES.items()}

    def fill(tmp: Path) -> dict:
        acc, seconds = _train_models(recipes, tmp, log)
        # The roles need a teacher that knows more than the student (the aligned teacher's own level is not required)
        fails = [f"{n} hard accuracy {a['hard']:.2f} should beat the student's {_student_hard():.2f} by 0.1+"
                 for n, a in acc.items() if a["hard"] < _student_hard() + 0.1]
        fails += [f"{n} easy accuracy {a['easy']:.2f} should be >= 0.8" for n, a in acc.items() if a["easy"] < 0.8]
        if fails:
            raise SystemExit("cross-tokenizer teachers' roles not met:\n  " + "\n  ".join(fails))
        return {"recipes": {n: {"format": f, "recipe_of": b, "steps": CROSS_STEPS}
                            for n, (f, b) in CROSS_RECIPES.items()},
                "pieces": PIECES, "heldout_accuracy": acc, "train_seconds": seconds, "torch": torch.__version__}
    return _replace(out, fill)


def build_family(out: Path = FAMILY_MODELS, log=print) -> dict:
    """The cross-tokenizer benchmark family's teachers (FAMILY_RECIPES, docs/cross-tokenizer.md) -> ``out``. Roles
    are checked before any OPD outcome exists: every teacher reads easy problems (>= 0.8); the knowledge teachers
    beat the student's hard accuracy by 0.1+, the student-recipe one stays within 0.1 of it."""
    def fill(tmp: Path) -> dict:
        acc, seconds = _train_models(FAMILY_RECIPES, tmp, log)
        s = _student_hard()
        fails = [f"{n} easy accuracy {a['easy']:.2f} should be >= 0.8" for n, a in acc.items() if a["easy"] < 0.8]
        for n, (_, drop, _, _) in FAMILY_RECIPES.items():
            if drop == 0 and acc[n]["hard"] < s + 0.1:
                fails.append(f"{n} hard accuracy {acc[n]['hard']:.2f} should beat the student's {s:.2f} by 0.1+")
            if drop > 0 and abs(acc[n]["hard"] - s) > 0.1:
                fails.append(f"{n} hard accuracy {acc[n]['hard']:.2f} should stay within 0.1 of the student's {s:.2f}")
        if fails:
            raise SystemExit("cross-tokenizer family's roles not met:\n  " + "\n  ".join(fails))
        return {"recipes": {n: dict(zip(("format", "drop_carry", "seed", "pieces"), r))
                            for n, r in FAMILY_RECIPES.items()},
                "steps": CROSS_STEPS, "heldout_accuracy": acc, "train_seconds": seconds, "torch": torch.__version__}
    return _replace(out, fill)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", action="store_true", help="build the benchmark family's teachers instead")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    m = build_family(args.out or FAMILY_MODELS) if args.family else build(args.out or CROSS_DIR)
    print(json.dumps(m["heldout_accuracy"], indent=2))


if __name__ == "__main__":
    main()
