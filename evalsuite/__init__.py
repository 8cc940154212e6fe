"""evalsuite: benchmark visual backbones on published protocols, with honest, reproducible numbers."""

__version__ = "0.1.0"


class EvalsuiteWarning(UserWarning):
    """Something evalsuite repaired or skipped on its own (an evicted cache entry, a discarded
    checkpoint, an unreadable record); the CLI prints each one as a line."""
