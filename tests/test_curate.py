"""Soft self-curation: entropy filter, normalised scores, and the sampler's keep probability."""

import json

import numpy as np
import pytest
from PIL import Image

from evalsuite.curate import colour_entropy, curate
from evalsuite.pretrain import PretrainConfig, load_curation_scores, pretrain
from evalsuite.sampling import GlobalBatchSampler


def test_colour_entropy_by_hand():
    assert colour_entropy(Image.new("RGB", (10, 10), (200, 10, 10))) == pytest.approx(0.0)
    half = np.zeros((10, 10, 3), np.uint8)
    half[:5] = 255
    assert colour_entropy(Image.fromarray(half)) == pytest.approx(1.0)
    codes = np.arange(512)
    levels = np.stack([codes // 64, (codes // 8) % 8, codes % 8], -1) * 32 + 16  # each of the 512 bins once
    assert colour_entropy(Image.fromarray(levels.reshape(16, 32, 3).astype(np.uint8))) == pytest.approx(9.0)


@pytest.mark.slow
def test_curate_scores_are_normalised_and_filtered(tmp_path):
    checkpoint = pretrain(PretrainConfig(backbone="mae-tiny", steps=2, batch_size=8, out=str(tmp_path / "scorer"), image_size=64))
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (400, 360, 3), dtype=np.uint8)).save(data / f"noise{i}.png")
    Image.fromarray(rng.integers(0, 256, (100, 400, 3), dtype=np.uint8)).save(data / "small.png")  # side < 320
    Image.new("RGB", (400, 400), (90, 90, 90)).save(data / "flat.png")  # entropy 0
    result = curate(checkpoint, data)
    scores = result["scores"]
    assert set(scores) == {f"noise{i}.png" for i in range(5)} | {"small.png", "flat.png"}
    assert scores["small.png"] == 0.0 and scores["flat.png"] == 0.0
    kept = [scores[f"noise{i}.png"] for i in range(5)]
    assert all(0.0 <= s <= 1.0 for s in kept) and max(kept) == 1.0
    assert result == curate(checkpoint, data)  # reproducible


def test_sampler_keeps_each_image_with_probability_equal_to_its_score(tmp_path):
    keep = np.array([0.0, 1.0, 0.5, 0.5] * 25)
    sampler = GlobalBatchSampler(len(keep), 1, 1, 0, 0, 0, 1, keep)
    counts = np.zeros(len(keep))
    epochs = 200
    for epoch in range(epochs):
        counts[sampler.epoch_order(epoch).numpy()] += 1
    assert counts[keep == 0].sum() == 0 and np.all(counts[keep == 1] == epochs)
    assert counts[keep == 0.5].mean() / epochs == pytest.approx(0.5, abs=0.03)


def test_scores_file_must_cover_every_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "scores.json").write_text(json.dumps({"scores": {}}))
    with pytest.raises(ValueError, match="no score for 1 images"):
        load_curation_scores(tmp_path / "scores.json", [tmp_path / "a.jpg"], tmp_path)
