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


def make_coarse_tokenizer():
    """WordLevel over the zoo's characters and PIECES; a regex split takes a piece wherever one starts."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([PAD, EOS] + sorted(set(CHARS)) + PIECES)}
    pattern = "|".join(re.escape(p) for p in sorted(PIECES, key=len, reverse=True)) + "|."
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.chat_template = TEMPLATE
    hf.model_max_length = 128
    return hf


def _batches(tok, fmt: str):
    def batch(rng: random.Random, n: int):
        out = []
        for a, b in sample_problems(rng, n, HARD_SHARE):
            prompt = tok.encode(prompt_text(a, b) + ">", add_special_tokens=False)
            resp = tok.encode(scratchpad(a, b, fmt, rng), add_special_tokens=False) + [tok.eos_token_id]
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


def build(out: Path = CROSS_DIR, log=print) -> dict:
    torch.set_num_threads(2)  # fixed, as build.py: the thread count changes float rounding
    tok = make_coarse_tokenizer()
    hard, easy = heldout()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    acc, seconds = {}, {}
    for name, (fmt, base) in CROSS_RECIPES.items():
        _, _, seed, _, _, _ = RECIPES[base]
        steps = CROSS_STEPS
        t0 = time.perf_counter()
        log(f"training {name}: format={fmt} seed={seed} steps={steps} (the {base!r} recipe, coarse tokenizer)")
        model = new_model(tok, seed)
        train(model, tok, _batches(tok, fmt), steps, seed=seed, log=log)
        acc[name] = {"hard": coarse_accuracy(model, tok, hard), "easy": coarse_accuracy(model, tok, easy)}
        seconds[name] = time.perf_counter() - t0
        log(f"  {name}: hard {acc[name]['hard']:.3f} easy {acc[name]['easy']:.3f} ({seconds[name]:.0f} s)")
        save(model.to(torch.bfloat16), tok, tmp / name)
    # The roles need a teacher that knows more than the student (the aligned teacher's own level is not required)
    student_hard = json.loads((ZOO_MODELS / "manifest.json").read_text())["heldout_accuracy"]["student"]["hard"]
    fails = [f"{n} hard accuracy {a['hard']:.2f} should beat the student's {student_hard:.2f} by 0.1+"
             for n, a in acc.items() if a["hard"] < student_hard + 0.1]
    fails += [f"{n} easy accuracy {a['easy']:.2f} should be >= 0.8" for n, a in acc.items() if a["easy"] < 0.8]
    if fails:
        raise SystemExit("cross-tokenizer teachers' roles not met:\n  " + "\n  ".join(fails))
    manifest = {"recipes": {n: {"format": f, "recipe_of": b, "steps": CROSS_STEPS}
                            for n, (f, b) in CROSS_RECIPES.items()},
                "pieces": PIECES, "heldout_accuracy": acc, "train_seconds": seconds, "torch": torch.__version__}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=CROSS_DIR)
    args = ap.parse_args()
    m = build(args.out)
    print(json.dumps(m["heldout_accuracy"], indent=2))


if __name__ == "__main__":
    main()
