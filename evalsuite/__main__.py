"""`python -m evalsuite …` (what torchrun launches)."""

from .cli import app

app()
