"""Feed-forward 3D reconstruction: WAI data → multi-view probe → protocol → MapAnything's metrics."""

from evalsuite.registry import TASKS

from .data import list_scenes, load_scene
from .protocols import FF3D

TASKS.register("ff3d", FF3D)

__all__ = ["list_scenes", "load_scene"]
