"""ImageNet-1k data: ImageFolder ``train/<wnid>/*`` and ``val/<wnid>/*``, and the labelled subsets of
low-shot runs: ``label_fraction`` (seeded per class by ``subset_seed``, the same images for every
backbone and run seed) or ``label_subset``, a file of image names in the format of the standard
1 %/10 % lists (SimCLR's ``1percent.txt``: one ``n01440764_10026.JPEG`` per line).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import ImageFolder

from evalsuite.data import DataNotFoundError
from evalsuite.sampling import seeded


def load_split(root: Path, split: str, transform) -> ImageFolder:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataNotFoundError(f"ImageNet split {split!r} not found at {folder}: expected ImageFolder {split}/<class>/*.JPEG")
    return ImageFolder(str(folder), transform=transform)


def labelled_rows(dataset: ImageFolder, fraction: float, subset_file: str, subset_seed: int) -> torch.Tensor:
    """Indices of the training images whose labels a low-shot run may use (all by default)."""
    if subset_file and fraction != 1.0:
        raise ValueError("give label_fraction or label_subset, not both")
    if subset_file:
        if not Path(subset_file).is_file():
            raise DataNotFoundError(f"label_subset file {subset_file} not found: expected one image name per line")
        names = {line.strip() for line in Path(subset_file).read_text().splitlines() if line.strip()}
        rows = [i for i, (path, _) in enumerate(dataset.samples) if Path(path).name in names]
        found = {Path(dataset.samples[i][0]).name for i in rows}
        if found != names:
            missing = sorted(names - found)
            raise ValueError(f"{len(missing)} images of {subset_file} are not in the train split, e.g. {missing[:3]}")
        return torch.tensor(rows)
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    targets = torch.tensor(dataset.targets)
    if fraction == 1.0:
        return torch.arange(len(targets))
    rows = []
    for c in range(len(dataset.classes)):
        members = torch.nonzero(targets == c).flatten()
        keep = max(1, round(len(members) * fraction))
        rows.append(members[torch.randperm(len(members), generator=seeded(subset_seed, c, 17))[:keep]])
    return torch.cat(rows).sort().values
