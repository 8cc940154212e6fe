"""The VQA family's own commands (`Task.commands`): ``evalsuite score vqa RESULTS --annotations …``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .metrics import vqa_score_files


def score(
    results: Path = typer.Argument(..., help="Result file: a JSON list of {question_id, answer} (the VQA server's format)."),
    annotations: Path = typer.Option(..., help="v2_mscoco_<split>_annotations.json"),
    questions: Optional[Path] = typer.Option(None, help="v2_OpenEnded_mscoco_<split>_questions.json (checks the split)."),
    json_output: bool = typer.Option(False, "--json", help="Print the evaluator's accuracy dict as JSON."),
):
    """VQA accuracy exactly as the official vqaEval.py computes it (rounded to 2 decimals like it)."""
    from evalsuite.cli import fail, print_table

    try:
        scores = vqa_score_files(results, annotations, questions).official()
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if json_output:
        sys.stdout.write(json.dumps(scores, indent=1) + "\n")
        return
    table = Table(title=f"VQA accuracy of {results}")
    table.add_column("answer / question type", overflow="fold")
    table.add_column("accuracy", justify="right")
    table.add_row("overall", f"{scores['overall']:.2f}", style="bold")
    for name, value in scores["perAnswerType"].items():
        table.add_row(name, f"{value:.2f}")
    for name, value in sorted(scores["perQuestionType"].items()):
        table.add_row(f"  {name}", f"{value:.2f}")
    print_table(table)
