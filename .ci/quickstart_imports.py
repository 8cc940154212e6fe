"""Run in a venv made with exactly the README's quickstart install line: does everything the
quickstart runs import there?

Two checks, neither imports a heavy module: (1) every task the quickstart runs reports no missing
requirement (`Task.missing_extra`); (2) every module that the package's code imports anywhere
(function-level imports included, found by parsing the source) resolves, except those of extras
the quickstart does not use (listed below, each with its extra). A new ``import foo`` of a package
that only a test environment has fails here, not on a user's machine.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"evalsuite", "backbones", "tasks"}
OUTSIDE_THE_QUICKSTART = {  # module: the extra that brings it
    "mmseg": "seg", "mmcv": "seg", "submitit": "slurm", "huggingface_hub": "hub", "tomli": "core (Python 3.10 only)",
}


def imported_modules() -> dict[str, str]:
    """{top-level module: first place it is imported} over the package's source files."""
    found: dict[str, str] = {}
    for folder in sorted(FIRST_PARTY):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    found.setdefault(name.split(".")[0], f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def main() -> int:
    sys.path.insert(0, str(REPO))
    problems = []
    for module, where in sorted(imported_modules().items()):
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module in OUTSIDE_THE_QUICKSTART:
            continue
        if importlib.util.find_spec(module) is None:
            problems.append(f"{module} (imported at {where}) is not installed by the quickstart's install line")
    from evalsuite.quickstart import quickstart_tasks
    from evalsuite.registry import TASKS

    tasks = quickstart_tasks()
    for task in tasks:
        if (reason := TASKS.get(task).missing_extra()) is not None:
            problems.append(f"quickstart task {task}: {reason}")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print(f"quickstart install: the imports of {len(tasks)} quickstart tasks ({', '.join(tasks)}) resolve")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
