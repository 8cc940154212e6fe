"""Robot policy learning: MetaWorld simulator → BC policy → protocol (success at the last step)."""

from evalsuite.registry import TASKS

from .protocols import METAWORLD

TASKS.register("metaworld", METAWORLD)
