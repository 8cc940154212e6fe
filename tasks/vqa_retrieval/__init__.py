"""VQA v2 and image–text retrieval: official-format data → cross-modal adapter → protocols, scored with
the official VQA evaluator's accuracy and ALBEF's recall conventions (`evalsuite.metrics`)."""

from evalsuite.registry import TASKS

from .data import load_karpathy, load_vqa
from .protocols import RETRIEVAL, VQA

TASKS.register("vqa", VQA)
TASKS.register("retrieval", RETRIEVAL)

__all__ = ["load_karpathy", "load_vqa"]
