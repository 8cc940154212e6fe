"""VQA v2 and Karpathy-split retrieval data, as the official files lay them out.

VQA v2: ``v2_OpenEnded_mscoco_<split>_questions.json`` and ``v2_mscoco_<split>_annotations.json``,
images ``<folder>/COCO_<folder>_<image_id:012d>.jpg`` (test-dev2015 questions ask about test2015
images and have no annotations). Retrieval: Karpathy's ``dataset_<name>.json`` (``images[]`` with
``filename``, optional ``filepath``, ``split`` and ``sentences[].raw``); every caption of an image
is kept (COCO's 5K test split has 25,010, not 25,000).

Every problem with the files is one line naming the file, question or image.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from evalsuite.data import DataNotFoundError, require_fields, within
from tasks.vqa_retrieval.metrics import vqa_normalise, vqa_question_accuracy

IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test-dev2015": "test2015", "test2015": "test2015"}


# ---------------------------------------------------------------------------------------
# VQA v2
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    image_id: int
    image: Path
    question: str
    answers: tuple[str, ...] = ()  # the 10 human answers; empty for unannotated splits (test-dev)
    answer_type: str = ""
    question_type: str = ""
    multiple_choice_answer: str = ""

    def annotation(self) -> dict:
        """The fields the official evaluator reads."""
        return {"question_id": self.question_id, "answers": [{"answer": a} for a in self.answers],
                "answer_type": self.answer_type, "question_type": self.question_type}


def question_file(root: Path, split: str) -> Path:
    return Path(root) / f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / f"v2_mscoco_{split}_annotations.json"


def read_json(path: Path, key: str, what: str) -> list[dict]:
    """``json[key]`` of an official file, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{what}: {path} not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{what}: {path} has no {key!r} list")
    return data[key]


def load_vqa(root: str | Path, split: str = "val2014", annotated: bool = True) -> list[VQAQuestion]:
    """The questions of ``split`` with their annotations (``annotated``) and image paths, each checked."""
    root = Path(root)
    if split not in IMAGE_FOLDERS:
        raise ValueError(f"unknown VQA v2 split {split!r}: one of {', '.join(IMAGE_FOLDERS)}")
    questions = read_json(question_file(root, split), "questions", f"VQA v2 {split} questions")
    annotations = {}
    if annotated:
        rows = read_json(annotation_file(root, split), "annotations", f"VQA v2 {split} annotations")
        afile = annotation_file(root, split)
        for k, a in enumerate(rows):
            require_fields(a, {"question_id": int, "answers": list, "answer_type": str, "question_type": str},
                           f"{afile}: annotation {k}")
            for j, answer in enumerate(a["answers"]):
                require_fields(answer, {"answer": str}, f"{afile}: annotation {k}, answer {j}")
        annotations = {a["question_id"]: a for a in rows}
    folder = IMAGE_FOLDERS[split]
    out = []
    qfile = question_file(root, split)
    for k, q in enumerate(questions):
        require_fields(q, {"question_id": int, "image_id": int, "question": str}, f"{qfile}: question {k}")
        image = root / folder / f"COCO_{folder}_{q['image_id']:012d}.jpg"
        if not image.is_file():
            raise DataNotFoundError(f"VQA v2 {split}: question {q['question_id']} asks about image {q['image_id']}, "
                                    f"but {image} does not exist")
        if not annotated:
            out.append(VQAQuestion(q["question_id"], q["image_id"], image, q["question"]))
            continue
        ann = annotations.get(q["question_id"])
        if ann is None:
            raise ValueError(f"VQA v2 {split}: question {q['question_id']} has no annotation in "
                             f"{annotation_file(root, split)}")
        out.append(VQAQuestion(q["question_id"], q["image_id"], image, q["question"],
                               tuple(a["answer"] for a in ann["answers"]), ann["answer_type"], ann["question_type"],
                               ann.get("multiple_choice_answer", "")))
    if not out:
        raise ValueError(f"VQA v2 {split}: {question_file(root, split)} holds no questions")
    return out


def preprocess_answer(answer: str) -> str:
    """An answer as the vocabulary keeps it (BUTD's ``preprocess_answer``): the evaluator's
    normalisation, then commas removed."""
    return vqa_normalise(answer).replace(",", "")


def answer_vocabulary(questions: list[VQAQuestion], size: int) -> list[str]:
    """The ``size`` most frequent preprocessed ``multiple_choice_answer``s of the training questions
    (ties by the answer), as BUTD/ViLT build VQA v2's 3,129 — but from train only, because val is
    our report split."""
    counts = Counter(preprocess_answer(q.multiple_choice_answer) for q in questions if q.multiple_choice_answer)
    counts.pop("", None)
    if not counts:
        raise ValueError("the answer vocabulary is empty: no training question has a multiple_choice_answer "
                         "(are these the train2014 annotations?)")
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def soft_targets(question: VQAQuestion, index: dict[str, int], rule: str) -> dict[int, float]:
    """Answer index → target score of one question. ``official``: the evaluator's own accuracy of
    answering that (0, .3, .6, .9, 1 for 0..≥4 of 10 humans; BUTD/ViLT's scores); ``min-count-3``:
    min(1, #humans giving it / 3) over the preprocessed answers (the VQA paper's formula)."""
    out = {}
    if rule == "min-count-3":
        for answer, count in Counter(preprocess_answer(a) for a in question.answers).items():
            if answer in index:
                out[index[answer]] = min(1.0, count / 3)
        return out
    candidates = {preprocess_answer(a) for a in question.answers} | set(question.answers)
    for answer in candidates:
        if answer in index:
            score = vqa_question_accuracy(answer, question.answers)
            if score > 0:
                out[index[answer]] = score
    return out


# ---------------------------------------------------------------------------------------
# Karpathy splits
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalItem:
    image: Path
    captions: tuple[str, ...]


def load_karpathy(json_path: str | Path, image_root: str | Path, split: str = "test") -> list[RetrievalItem]:
    """The images of ``split`` ("train" includes "restval", as the standard training set) with all
    their captions; images live at ``image_root/[filepath/]filename``."""
    json_path = Path(json_path)
    images = read_json(json_path, "images", "Karpathy split file")
    wanted = {"train": {"train", "restval"}}.get(split, {split})
    items = []
    for k, img in enumerate(images):
        require_fields(img, {"filename": str, "split": str}, f"{json_path}: image {k}")
        if img.get("split") not in wanted:
            continue
        for j, sentence in enumerate(img.get("sentences", ())):
            require_fields(sentence, {"raw": str}, f"{json_path}: image {k}, sentence {j}")
        path = within(image_root, Path(img.get("filepath", "")) / img["filename"], json_path)
        if not path.is_file():
            raise DataNotFoundError(f"{json_path.name}: image {img['filename']} of split {split!r} not found at {path}")
        captions = tuple(s["raw"] for s in img.get("sentences", ()))
        if not captions:
            raise ValueError(f"{json_path.name}: image {img['filename']} has no captions")
        items.append(RetrievalItem(path, captions))
    if not items:
        present = sorted({str(img.get("split")) for img in images})
        raise ValueError(f"{json_path} has no images in split {split!r} (its splits: {', '.join(present) or 'none'})")
    return items
