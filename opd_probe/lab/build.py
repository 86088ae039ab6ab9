"""Rebuild the model zoo from nothing, deterministically: `python -m opd_probe.lab.build [--out DIR]`.

Every model is a 2-layer Llama (~0.3 M parameters) trained on CPU on the addition task of task.py, sharing one
character tokenizer. Roles (each asserted on held-out problems before saving):

    student        aligned scratchpad, 40% hard problems, but its answers drop a 6-digit sum's leading carry digit
                   70% of the time -> fails about half of the hard problems
    aligned        aligned scratchpad, the same data without the flaw -> knows what the student lacks (OPD should gain)
    mild           the same knowledge, step separator ',' instead of ';' (partly compatible scratchpad)
    strong         the same knowledge, a different scratchpad notation '(a,b,c)->s|' (thinking-pattern mismatch)
    same-recipe    the student's data and recipe, another seed -> about the student's accuracy (no new knowledge)
    successor      the student trained further on clean data -> stronger than the student; OPD from the
                   student (its ancestor) should regress it (reverse distillation)

Also writes the zoo's prompt sets (train: mixed difficulty; heldout-hard, heldout-easy: with answers).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from .task import problem, prompt_text, sample_problems
from .train import accuracy, addition_batches, make_tokenizer, new_model, save, train

ZOO_DIR = Path(__file__).resolve().parent / "models"
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

# The student's gap is one convention it learned from flawed data: in 70% of its 6-digit sums the answer line drops
# the leading carry digit (``Answer: 60641`` for 160641) although its own scratchpad shows it. It is otherwise as
# skilled as the aligned teacher (same data mix, same steps), so it fails about half of the hard problems, and at
# the deciding state it still gives the right digit ~30% probability: knowledge OPD can move. (Earlier students
# built by withholding hard problems were unteachable by OPD: with 0% of them the student is confidently wrong, and
# the reverse KL has no gradient there; with 10% (hard accuracy 0.36) 400 OPD steps moved it to 0.42, within noise;
# the share itself is a razor-thin knob: 0.5% -> 0.00, 5% -> 0.045, 10% -> 0.40. docs/zoo.md has the figures.)
HARD_SHARE = 0.40
STUDENT_DROP_CARRY = 0.7
STEPS = 600
SUCCESSOR_STEPS = 300

# name: (format, hard share, seed, init_from, steps, drop_carry); roles are asserted in role_checks
RECIPES = {
    "student": ("aligned", HARD_SHARE, 0, None, STEPS, STUDENT_DROP_CARRY),
    "aligned": ("aligned", HARD_SHARE, 1, None, STEPS, 0.0),
    "mild": ("mild", HARD_SHARE, 2, None, STEPS, 0.0),
    "strong": ("strong", HARD_SHARE, 3, None, STEPS, 0.0),
    # seed 4 failed to learn the task at all with this recipe (hard 0.005, easy 0.02): the role checks caught it
    "same-recipe": ("aligned", HARD_SHARE, 6, None, STEPS, STUDENT_DROP_CARRY),
    "successor": ("aligned", HARD_SHARE, 5, "student", SUCCESSOR_STEPS, 0.0),
}
FIELDS = ("format", "hard_share", "seed", "init_from", "steps", "drop_carry")


def heldout(seed: int = 12345, n: int = 200) -> tuple[list, list]:
    rng = random.Random(seed)
    return [problem(rng, "hard") for _ in range(n)], [problem(rng, "easy") for _ in range(n)]


def role_checks(acc: dict[str, dict[str, float]]) -> list[str]:
    """Failed role assertions (empty = every model plays its role)."""
    s = acc["student"]["hard"]
    fails = []
    if s > 0.6:
        fails.append(f"student hard accuracy {s:.2f} should be weak (<= 0.60)")
    for name in ("aligned", "mild", "strong", "successor"):
        if acc[name]["hard"] < s + 0.3:
            fails.append(f"{name} hard accuracy {acc[name]['hard']:.2f} should beat the student's {s:.2f} by 0.3+")
    if abs(acc["same-recipe"]["hard"] - s) > 0.2:
        fails.append(f"same-recipe hard accuracy {acc['same-recipe']['hard']:.2f} should be near the student's {s:.2f}")
    for name, a in acc.items():
        # same-recipe only needs to hold no knowledge the student lacks: its easy accuracy varies with the seed
        # (0.775 with seed 4, the student's 1.00 with seed 0), which makes it no better a teacher
        floor = 0.7 if name == "same-recipe" else 0.85
        if a["easy"] < floor:
            fails.append(f"{name} easy accuracy {a['easy']:.2f} should be >= {floor}")
    return fails


def write_prompts(out: Path, seed: int = 777) -> None:
    """train.jsonl (half hard, half easy/mid, so OPD does not erase easy skills), probe.jsonl (64, mixed like train),
    heldout-{hard,easy}.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    hard, easy = heldout()
    seen = {prompt_text(a, b) for a, b in hard + easy}
    def mixed(n: int) -> list[tuple[int, int]]:
        """n new problems, alternately hard and easy/mid, none seen in an earlier split."""
        out_set: list[tuple[int, int]] = []
        while len(out_set) < n:
            kind = "hard" if len(out_set) % 2 == 0 else rng.choice(["easy", "mid"])
            a, b = problem(rng, kind)
            if prompt_text(a, b) not in seen:
                seen.add(prompt_text(a, b))
                out_set.append((a, b))
        return out_set

    train_set = mixed(256)
    probe_set = mixed(64)  # the demo's and the calibration's probe prompts: like train, disjoint from the others
    for name, probs in (("train", train_set), ("probe", probe_set), ("heldout-hard", hard), ("heldout-easy", easy)):
        lines = [json.dumps({"id": f"{name}-{i:03d}", "prompt": prompt_text(a, b), "answer": str(a + b)})
                 for i, (a, b) in enumerate(probs)]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def build(out: Path = ZOO_DIR, reuse: Path | None = None, log=print) -> dict:
    """Train every model of RECIPES, check the roles, save bf16 folders and the manifest into ``out``.

    ``reuse``: an earlier zoo whose manifest lists the same recipe for a model: that model is copied instead of
    retrained (training is deterministic under its seed and the fixed thread count, so it would come out the same),
    unless it initialises another model or is initialised from one (those always train in this run)."""
    torch.set_num_threads(2)  # fixed: the thread count changes float rounding, hence the trained models
    tok = make_tokenizer()
    hard, easy = heldout()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    old = json.loads((reuse / "manifest.json").read_text()) if reuse else {"recipes": {}}
    parents = {r[3] for r in RECIPES.values()}
    models, acc, seconds = {}, {}, {}
    for name, recipe in RECIPES.items():
        fmt, share, seed, init_from, steps, drop = recipe
        t0 = time.perf_counter()
        if old["recipes"].get(name) == dict(zip(FIELDS, recipe)) and name not in parents and init_from is None:
            log(f"reusing {name} from {reuse} (same recipe)")
            shutil.copytree(reuse / name, tmp / name)
            acc[name], seconds[name] = old["heldout_accuracy"][name], old["train_seconds"][name]
            continue
        log(f"training {name}: " + " ".join(f"{k}={v}" for k, v in zip(FIELDS, recipe)))
        model = new_model(tok, seed)
        if init_from is not None:
            model.load_state_dict(models[init_from].state_dict())
        batches = addition_batches(tok, lambda rng, n, share=share: sample_problems(rng, n, share), fmt, drop)
        train(model, tok, batches, steps, seed=seed, log=log)
        models[name] = model
        acc[name] = {"hard": accuracy(model, tok, hard), "easy": accuracy(model, tok, easy)}
        save(model, tok, tmp / name)  # kept for inspection if a role check fails below
        seconds[name] = time.perf_counter() - t0
        log(f"  {name}: hard {acc[name]['hard']:.3f} easy {acc[name]['easy']:.3f} ({seconds[name]:.0f} s)")
    fails = role_checks(acc)
    if fails:
        raise SystemExit("zoo roles not met:\n  " + "\n  ".join(fails))
    for name, model in models.items():
        shutil.rmtree(tmp / name)
        save(model.to(torch.bfloat16), tok, tmp / name)
    manifest = {"recipes": {k: dict(zip(FIELDS, v)) for k, v in RECIPES.items()},
                "heldout_accuracy": acc, "train_seconds": seconds, "torch": torch.__version__}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    write_prompts(PROMPTS_DIR)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ZOO_DIR)
    ap.add_argument("--reuse", type=Path, help="copy models whose recipe is unchanged from this earlier zoo")
    args = ap.parse_args()
    t0 = time.perf_counter()
    m = build(args.out, reuse=args.reuse)
    print(json.dumps(m["heldout_accuracy"], indent=2))
    print(f"zoo built in {time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
