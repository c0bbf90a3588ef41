"""Rewrite references to the repository's layers as modules of the `cegraph` package.

The layers (cli/, storage/, tasks/, flows/, deployments/) stay top-level folders in the
repository but install as `cegraph.cli`, `cegraph.storage`, ... (setup.py), so every
`import storage`, `from tasks.x import y`, `python -m cli.main` or `"flows.nightly.f"` names
them through `cegraph`. Idempotent: a rewritten name is preceded by `cegraph.` and no rule
matches it again. Run from the repository root after a merge:

    python tools/namespace_imports.py          # rewrites, then sorts the touched imports (ruff)
    python tools/namespace_imports.py --check  # lists what it would rewrite; exit 1 if any
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "storage", "tasks", "flows", "deployments")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt", ".sh"}
# measurement records quote the commands as they were run (on the layout of their commit)
KEEP = {"docs/benchmarks.md", "tools/namespace_imports.py"}
LAYER = "|".join(LAYERS)


def modules(layer: str) -> set[str]:
    """Names importable directly under a layer (its modules and subpackages)."""
    folder = ROOT / layer
    return ({p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
            | {p.parent.name for p in folder.glob("*/__init__.py")})


SUBMODULES = {layer: modules(layer) for layer in LAYERS}

# `from storage.x import y` -> `from cegraph.storage.x import y`
FROM = re.compile(rf"(?<![\w.])(from\s+)({LAYER})((?:\.\w+)*\s+import\b)")
# `import storage.x as y` -> `import cegraph.storage.x as y`; `import storage.x` binds the
# name `storage`: it becomes `import cegraph.storage.x` and DOTTED rewrites its uses
IMPORT_DOTTED = re.compile(rf"(?<![\w.])(import\s+)({LAYER})(\.\w+)")
# a statement `import storage [as s]` -> `from cegraph import storage [as s]` (binds the same
# name); elsewhere (prose, strings) `import cegraph.storage`
IMPORT_BARE = re.compile(rf"^(\s*)import\s+({LAYER})\b(?![.\w])", re.M)
IMPORT_NAMED = re.compile(rf"(?<!cegraph )(?<![\w.])(import\s+)({LAYER})\b(?![.\w])")
# `storage.registry.Stale`, `storage.Warehouse`, "-m cli.main", "cli.main:main": a layer
# followed by one of its modules or a class name (so `tasks.append(...)` or the
# `deployments.forced` column stay as they are)
DOTTED = re.compile(rf"(?<![\w./-])({LAYER})\.(\w+)")


def rewrite(text: str) -> str:
    text = FROM.sub(r"\1cegraph.\2\3", text)
    text = IMPORT_DOTTED.sub(r"\1cegraph.\2\3", text)
    text = IMPORT_BARE.sub(r"\1from cegraph import \2", text)
    text = IMPORT_NAMED.sub(r"\1cegraph.\2", text)
    return DOTTED.sub(lambda m: f"cegraph.{m[1]}.{m[2]}"
                      if m[2] in SUBMODULES[m[1]] or m[2][0].isupper() else m[0], text)


def files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = sorted(set(listed.splitlines()) - KEEP)
    return [ROOT / n for n in names
            if (Path(n).suffix in SUFFIXES or Path(n).name == "Makefile")
            and (ROOT / n).is_file()]


def ruff() -> list[str]:
    found = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return [found] if Path(found).is_file() else [sys.executable, "-m", "ruff"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if needed")
    args = parser.parse_args()
    changed = []
    for path in files():
        text = path.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(path.relative_to(ROOT))
    if args.check:
        return 1 if changed else 0
    python = [str(p) for p in changed if p.suffix == ".py"]
    if python:  # `cegraph.storage` sorts among the cegraph imports, not where `storage` was
        subprocess.run([*ruff(), "check", "--quiet", "--select", "I", "--fix", *python],
                       cwd=ROOT, check=False)
        # a longer name can push prose past the line length: left to a human to re-wrap
        subprocess.run([*ruff(), "check", "--quiet", "--select", "E501", *python],
                       cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
