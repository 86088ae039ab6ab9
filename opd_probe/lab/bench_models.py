"""Build the validation benchmark's models and prompt sets, deterministically (docs/validation.md):

    python -m opd_probe.lab.bench_models [--family add lookup] [--out benchmarks/validation/models]

Per family (families.py), 2-layer Llamas (~0.4 M parameters) on CPU, one word-level tokenizer. Roles:

    s0 s1 s2       the student's recipe (the flaw at probability 0.7), three pretraining seeds: s0 and s1 are
                   students, every seed is a same-recipe teacher (no new knowledge) for the others
    k00 ... k60    the knowledge gap, graded: the student's format, the flaw at probability 0 ... 0.6 (add), or the
                   flaw kept on a share of the hard items (lookup: k60 keeps it on 60% of them)
    m90 ... m15    the thinking pattern, graded: full knowledge, each connector slot from the student's synonyms
                   with probability 0.90 ... 0.15, else from another format's (every student token seen)
    large          a larger model (3 layers, width 192) on the student's data: no new knowledge
    succ           s0 trained further on clean data: a stronger student whose ancestor is s0 (reverse distillation:
                   its teachers are s0 and ``large``, a stronger model carrying the ancestor's convention)

Each model's held-out accuracy (hard / easy) is measured and recorded; the role checks (``role_checks``) refuse a
build in which a model does not play its role.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from .families import FAMILIES, GEN, HARD_ITEMS, Style, tokenizer
from .train import new_model, save, train

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "validation"
STUDENT_FLAW = 0.7
HARD_SHARE = 0.4


def _knowledge(family: str, level: float) -> Style:
    """A teacher that keeps the student's flaw to degree ``level`` (0 = fixes every error)."""
    if family == "add":
        return Style(flaw=level)
    kept = round(level * len(HARD_ITEMS))
    return Style(flaw=STUDENT_FLAW, fixed=frozenset(HARD_ITEMS[kept:]))


def recipes(family: str) -> dict[str, dict]:
    """name -> recipe (style, seed, width, layers, steps, init_from), in build order (parents first)."""
    student = Style(flaw=STUDENT_FLAW)
    r = {f"s{i}": dict(style=student, seed=i) for i in range(3)}
    for lvl in (0.0, 0.15, 0.3, 0.45, 0.6):
        r[f"k{round(lvl * 100):02d}"] = dict(style=_knowledge(family, lvl), seed=10 + round(lvl * 100))
    for mix in (0.9, 0.6, 0.35, 0.15):
        r[f"m{round(mix * 100):02d}"] = dict(style=Style(mix=mix), seed=20 + round(mix * 100))
    r["large"] = dict(style=student, seed=30, width=192, layers=3)
    steps = FAMILIES[family].train_steps
    r["succ"] = dict(style=Style(), seed=40, init_from="s0", steps=steps // 2)
    return {k: {"width": 128, "layers": 2, "steps": steps, "init_from": None, **v} for k, v in r.items()}


def style_dict(s: Style) -> dict:
    return {"mix": s.mix, "flaw": s.flaw, "fixed": sorted(s.fixed)}


def encoder(tok):
    vocab = tok.get_vocab()
    gen, eos = vocab[GEN], tok.eos_token_id

    def encode(F, problem, style: Style, rng: random.Random) -> tuple[list[int], list[int]]:
        return [vocab[p] for p in F.prompt(problem)] + [gen], [vocab[p] for p in F.response(problem, style, rng)] + [eos]
    return encode


def batches(F, tok, style: Style, hard_share: float = HARD_SHARE):
    encode = encoder(tok)

    def batch_fn(rng: random.Random, n: int):
        out = []
        for _ in range(n):
            kind = "hard" if rng.random() < hard_share else "easy"
            out.append(encode(F, F.problem(rng, kind), style, rng))
        return out
    return batch_fn


def heldout(F, seed: int = 12345, n: int = 200) -> tuple[list, list]:
    rng = random.Random(seed)
    return [F.problem(rng, "hard") for _ in range(n)], [F.problem(rng, "easy") for _ in range(n)]


@torch.no_grad()
def accuracy(model, tok, F, problems: list, batch: int = 200) -> float:
    """Greedy answer accuracy, checked as verify checks it (opd_probe/answers.py)."""
    from transformers import GenerationConfig

    from ..answers import is_correct

    encode = encoder(tok)
    gc = GenerationConfig(do_sample=False, max_new_tokens=F.max_new_tokens, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    model.eval()
    correct = 0
    for b0 in range(0, len(problems), batch):
        chunk = problems[b0:b0 + batch]
        ids = torch.tensor([encode(F, p, Style(), random.Random(0))[0] for p in chunk])  # one prompt length
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        for p, row in zip(chunk, out[:, ids.shape[1]:].tolist()):
            correct += is_correct(tok.decode(row, skip_special_tokens=True), F.answer(p))
    return correct / len(problems)


def role_checks(acc: dict[str, dict[str, float]]) -> list[str]:
    """Failed role assertions (empty = every model plays its role)."""
    fails = []
    s = acc["s0"]["hard"]
    if s > 0.6:
        fails.append(f"s0 hard accuracy {s:.2f} should be weak (<= 0.60)")
    for name in ("k00", "m90", "m60", "succ"):
        if acc[name]["hard"] < s + 0.3:
            fails.append(f"{name} hard accuracy {acc[name]['hard']:.2f} should beat s0's {s:.2f} by 0.3+")
    for name, a in acc.items():
        if a["easy"] < 0.85:
            fails.append(f"{name} easy accuracy {a['easy']:.2f} should be >= 0.85")
    return fails


def write_prompts(F, out: Path, seed: int = 777) -> None:
    """train.jsonl (512, half hard), probe.jsonl (64, mixed like train), heldout-hard/-easy.jsonl (200 each)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    hard, easy = heldout(F)
    seen = {tuple(F.prompt(p)) for p in hard + easy}

    def fresh(n: int) -> list:
        got: list = []
        while len(got) < n:
            p = F.problem(rng, "hard" if len(got) % 2 == 0 else "easy")
            if tuple(F.prompt(p)) not in seen:
                seen.add(tuple(F.prompt(p)))
                got.append(p)
        return got

    for name, probs in (("train", fresh(512)), ("probe", fresh(64)), ("heldout-hard", hard), ("heldout-easy", easy)):
        rows = [json.dumps({"id": f"{name}-{i:03d}", "prompt": "".join(F.prompt(p)), "answer": F.answer(p)})
                for i, p in enumerate(probs)]
        (out / f"{name}.jsonl").write_text("\n".join(rows) + "\n")


def build_family(family: str, out: Path, only: list[str] | None = None, log=print) -> dict:
    """Train the family's models (``only``: just these, keeping the others on disk), check roles, save bf16."""
    torch.set_num_threads(1)  # fixed: the thread count changes float rounding, hence the trained models
    F, tok = FAMILIES[family], tokenizer()
    fam_dir = out / family
    fam_dir.mkdir(parents=True, exist_ok=True)
    man_path = fam_dir / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {"models": {}}
    hard, easy = heldout(F)
    trained: dict[str, torch.nn.Module] = {}
    for name, rc in recipes(family).items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        log(f"[{family}] training {name}")
        model = new_model(tok, rc["seed"], hidden=rc["width"], layers=rc["layers"], intermediate=2 * rc["width"])
        if rc["init_from"]:
            src = trained.get(rc["init_from"])
            if src is None:
                from transformers import AutoModelForCausalLM
                src = AutoModelForCausalLM.from_pretrained(str(fam_dir / rc["init_from"]), dtype=torch.float32)
            model.load_state_dict(src.state_dict())
        train(model, tok, batches(F, tok, rc["style"]), rc["steps"], seed=rc["seed"], log=log)
        trained[name] = model
        acc = {"hard": accuracy(model, tok, F, hard), "easy": accuracy(model, tok, F, easy)}
        save(model.to(torch.bfloat16), tok, fam_dir / name)
        model.to(torch.float32)
        entry = {**{k: v for k, v in rc.items() if k != "style"}, "style": style_dict(rc["style"]),
                 "heldout_accuracy": acc, "train_seconds": round(time.perf_counter() - t0, 1)}
        log(f"[{family}]   {name}: hard {acc['hard']:.3f} easy {acc['easy']:.3f} ({entry['train_seconds']:.0f} s)")
        # re-read before writing: builds of one family may run in parallel processes (--only), one entry each
        manifest = json.loads(man_path.read_text()) if man_path.exists() else {"models": {}}
        manifest["models"][name] = entry
        manifest["torch"] = torch.__version__
        man_path.write_text(json.dumps(manifest, indent=2) + "\n")
    write_prompts(F, out.parent / "prompts" / family)
    if len(manifest["models"]) == len(recipes(family)):
        fails = role_checks({k: v["heldout_accuracy"] for k, v in manifest["models"].items()})
        manifest["role_checks"] = fails or "passed"
        man_path.write_text(json.dumps(manifest, indent=2) + "\n")
        if fails:
            raise SystemExit(f"[{family}] roles not met:\n  " + "\n  ".join(fails))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--only", nargs="+", help="train only these models (the others stay as they are on disk)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "models")
    args = ap.parse_args()
    for fam in args.family:
        build_family(fam, args.out, args.only)


if __name__ == "__main__":
    main()
