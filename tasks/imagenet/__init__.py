"""ImageNet-1k classification: data → heads → protocols (metrics: `evalsuite.metrics`)."""

from evalsuite.registry import TASKS

from .protocols import IMAGENET

TASKS.register("imagenet", IMAGENET)
