"""VQA v2 reader: ``v2_OpenEnded_mscoco_<split>_questions.json`` + ``v2_mscoco_<split>_annotations.json``,
images ``<split>/COCO_<split>_<image_id:012d>.jpg``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evalsuite.data import DataNotFoundError


@dataclass(frozen=True)
class VQASample:
    question_id: int
    image: Path
    question: str
    answers: tuple[str, ...]  # the 10 human answers
    answer_type: str


def load_vqa(root: str | Path, split: str = "val2014") -> list[VQASample]:
    root = Path(root)
    q_path = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    a_path = root / f"v2_mscoco_{split}_annotations.json"
    for path in (q_path, a_path):
        if not path.is_file():
            raise DataNotFoundError(f"VQA v2 {split}: {path} not found")
    annotations = {a["question_id"]: a for a in json.loads(a_path.read_text())["annotations"]}
    samples = []
    for q in json.loads(q_path.read_text())["questions"]:
        ann = annotations[q["question_id"]]
        samples.append(VQASample(q["question_id"], root / split / f"COCO_{split}_{q['image_id']:012d}.jpg", q["question"],
                                 tuple(a["answer"] for a in ann["answers"]), ann["answer_type"]))
    return samples
