"""Structure measures of opd_probe/ (issue 12): import arrows that run back up a floor, the longest function, the
largest module. Floors, lowest first: core (pure math, types, config, the run directory, the zoo resolver) <
backends < run (orchestration) < report < lab (zoo builder, ground truth, demo) < cli. The package's lazy public
API (opd_probe/__init__.py) is exempt. Run: python scripts/structure_metrics.py [--list]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "opd_probe"
FLOORS = ["core", "backends", "run", "report", "lab", "cli"]
# module (dotted, without "opd_probe.") -> floor; first matching prefix wins, the default is core
PREFIXES = [
    ("backends", "backends"), ("run", "run"), ("pipeline", "run"), ("select_prompts", "run"), ("verify", "run"),
    ("report", "report"), ("lab", "lab"), ("zoo.build", "lab"), ("zoo.train", "lab"), ("zoo.task", "lab"),
    ("zoo.ground_truth", "lab"), ("demo", "lab"), ("smollm2", "lab"), ("cli_options", "cli"), ("cli", "cli"), ("__main__", "cli"),
]


def floor(module: str) -> int:
    for prefix, name in PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return FLOORS.index(name)
    return 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, tree: ast.AST) -> set[str]:
    """Modules of this package imported anywhere in the file (top level or inside functions)."""
    mod = module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("opd_probe"):
                target = node.module[len("opd_probe."):] if node.module != "opd_probe" else ""
            else:
                continue
            names = [a.name for a in node.names]
            for n in names:  # `from . import metrics` imports a module; `from .x import f` imports x
                sub = f"{target}.{n}" if target else n
                found.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                          or (ROOT / Path(*sub.split("."))).is_dir() else target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("opd_probe."):
                    found.add(a.name[len("opd_probe."):])
    return {f for f in found if f and f != mod}


def main(argv: list[str]) -> None:
    arrows, up, funcs, sizes, rich_in, report_run = 0, [], [], [], [], []
    for path in sorted(ROOT.rglob("*.py")):
        src = path.read_text()
        tree = ast.parse(src)
        mod = module_name(path)
        sizes.append((len(src.splitlines()), str(path.relative_to(ROOT.parent))))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT.parent)}:{node.name}"))
        for target in sorted(imports(path, tree)):
            arrows += 1
            if mod and floor(target) > floor(mod):
                up.append(f"{mod} ({FLOORS[floor(mod)]}) -> {target} ({FLOORS[floor(target)]})")
        if mod.startswith("report"):
            for target in imports(path, tree):
                if floor(target) == FLOORS.index("run"):
                    report_run.append(f"{mod} imports {target}")
        if mod in ("report.html", "report.markdown"):
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    name = getattr(node, "module", None) or node.names[0].name
                    if name and (name.startswith("rich") or name.endswith("console")):
                        rich_in.append(f"{mod} imports {name}")
    funcs.sort(reverse=True)
    sizes.sort(reverse=True)
    print(f"import arrows: {arrows}; running back up a floor: {len(up)}")
    for u in up:
        print("   ", u)
    print(f"longest function: {funcs[0][0]} lines ({funcs[0][1]}); functions over 80 lines: "
          f"{sum(n > 80 for n, _ in funcs)}")
    print(f"largest module: {sizes[0][0]} lines ({sizes[0][1]}); modules over 450 lines: "
          f"{sum(n > 450 for n, _ in sizes)}")
    print(f"report modules importing an orchestrator: {len(report_run)}", *report_run,
          sep="\n    " if report_run else "")
    print(f"report html/markdown importing rich or the console: {len(rich_in)}", *rich_in, sep="\n    " if rich_in else "")
    if "--list" in argv:
        for n, f in funcs[:15]:
            print(f"  {n:4d} {f}")
        for n, f in sizes[:10]:
            print(f"  {n:4d} {f}")


if __name__ == "__main__":
    main(sys.argv[1:])
