"""Image–text retrieval data in Karpathy's JSON (Flickr30k / COCO splits): ``images[].filename``,
``split`` and ``sentences[].raw/tokens``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evalsuite.data import DataNotFoundError


@dataclass(frozen=True)
class RetrievalItem:
    image: Path
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]


def load_karpathy(json_path: str | Path, image_root: str | Path, split: str = "test") -> list[RetrievalItem]:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataNotFoundError(f"Karpathy split file {json_path} not found")
    data = json.loads(json_path.read_text())
    splits = {"train": {"train", "restval"}}.get(split, {split})
    return [RetrievalItem(Path(image_root) / img["filename"], tuple(s["raw"] for s in img["sentences"]),
                          tuple(tuple(s["tokens"]) for s in img["sentences"]))
            for img in data["images"] if img["split"] in splits]
