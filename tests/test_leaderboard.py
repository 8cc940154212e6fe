import io

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import ok_record
from evalsuite.cli import app
from evalsuite.leaderboard import check, compare, load_samples, load_tidy, pivots, record_world, render

COLS = ["data", "world", "task", "label", "variant", "backbone", "metric", "value", "higher_is_better", "primary", "tolerance",
        "seed", "weights", "task_version", "finished_at", "split"]


def frame(rows, world="seed0-small"):
    out = []
    for i, (data, task, backbone, metric, value, hib) in enumerate(rows):
        out.append(dict(data=data, world=world if data == "mini" else "", task=task, label=task, variant="",
                        backbone=backbone, metric=metric,
                        value=value, higher_is_better=hib,
                        primary=True, tolerance=0.5, seed=0, weights="random", task_version=1,
                        finished_at=f"2026-01-01T00:00:{i:02d}", split="val"))
    return pd.DataFrame(out, columns=COLS)


def test_pivot_keeps_mini_and_real_apart():
    tables = pivots(frame([
        ("real", "imagenet/linear", "pixio-h16", "top1", 80.0, True),
        ("mini", "imagenet/linear", "pixio-h16", "top1", 40.0, True),
        ("mini", "nyuv2/dpt", "pixio-tiny", "rmse", 0.5, False),
    ]))
    assert list(tables) == ["real", "mini seed0-small"]
    assert tables["real"].loc["pixio-h16"].tolist() == [80.0]
    assert "pixio-tiny" not in tables["real"].index
    assert tables["mini seed0-small"].loc["pixio-h16", "imagenet/linear · top1 ↑"] == 40.0
    assert tables["mini seed0-small"].loc["pixio-tiny", "nyuv2/dpt · rmse ↓"] == 0.5
    md = render(tables, "md")
    assert md.index("Real data") < md.index("Mini world seed0-small") and "| pixio-h16 | 80 |" in md
    assert "<table" in render(tables, "html")


def test_seeds_average_and_reruns_replace():
    rows = frame([("real", "t", "b", "m", 1.0, True), ("real", "t", "b", "m", 3.0, True)])
    rows.loc[1, "seed"] = 1
    assert pivots(rows)["real"].iloc[0, 0] == 2.0
    rows.loc[1, "seed"] = 0  # same seed: the newer run replaces the older
    assert pivots(rows)["real"].iloc[0, 0] == 3.0


def test_std_over_seeds_or_carried_by_the_record_is_rendered():
    rows = frame([("real", "t", "b", "m", 1.0, True), ("real", "t", "b", "m", 3.0, True),
                  ("real", "t", "c", "m", 5.0, True)])
    rows.loc[1, "seed"] = 1
    rows["std"] = [None, None, 0.25]  # c: one record that repeated its training over several seeds
    stds = pivots(rows, "std")["real"]
    assert stds.loc["b"].iloc[0] == pytest.approx(2**0.5) and stds.loc["c"].iloc[0] == 0.25
    md = render(pivots(rows), "md", pivots(rows, "std"))
    assert "| b | 2 ± 1.4 |" in md and "| c | 5 ± 0.25 |" in md
    csv = render(pivots(rows), "csv", pivots(rows, "std"))
    assert "t · m ↑ std" in csv.splitlines()[0]
    single = frame([("real", "t", "b", "m", 1.0, True)])
    assert "±" not in render(pivots(single), "md", pivots(single, "std"))


def test_a_task_version_bump_retires_older_numbers():
    rows = frame([("real", "t", "b", "m", 50.0, True), ("real", "t", "b", "m", 70.0, True)])
    rows.loc[0, "task_version"] = 2  # the older run, but of the newer version
    assert pivots(rows)["real"].iloc[0, 0] == 50.0


def test_compare_marks_better_side_by_direction():
    a = frame([("real", "cls", "m", "top1", 70.0, True), ("real", "depth", "m", "rmse", 0.40, False)])
    b = frame([("real", "cls", "m", "top1", 72.0, True), ("real", "depth", "m", "rmse", 0.45, False)])
    table = compare(a, b).set_index("task")
    assert table.loc["cls", "better"] == "b" and table.loc["cls", "delta"] == pytest.approx(2.0)
    assert table.loc["depth", "better"] == "a" and table.loc["depth", "delta"] == pytest.approx(0.05)


def test_compare_two_checkpoints_with_different_names_pairs_by_task():
    a = frame([("real", "cls", "ckpt-100", "top1", 70.0, True)])
    b = frame([("real", "cls", "ckpt-200", "top1", 69.0, True)])
    row = compare(a, b).iloc[0]
    assert row["better"] == "a" and row["backbone_a"] == "ckpt-100" and row["backbone_b"] == "ckpt-200"


def test_check_regression_missing_and_improvement():
    base = frame([("real", "cls", "m", "top1", 70.0, True), ("real", "depth", "m", "rmse", 0.40, False)])
    within = frame([("real", "cls", "m", "top1", 69.6, True), ("real", "depth", "m", "rmse", 0.30, False)])
    assert check(base, within).ok
    regressed = frame([("real", "cls", "m", "top1", 69.4, True), ("real", "depth", "m", "rmse", 0.40, False)])
    result = check(base, regressed)
    assert not result.ok and result.regressions["task"].tolist() == ["cls"]
    worse_rmse = frame([("real", "cls", "m", "top1", 70.0, True), ("real", "depth", "m", "rmse", 0.95, False)])
    assert check(base, worse_rmse).regressions["task"].tolist() == ["depth"]
    missing = frame([("real", "cls", "m", "top1", 75.0, True)])
    assert check(base, missing).missing["task"].tolist() == ["depth"]
    mini_only = frame([("mini", "cls", "m", "top1", 99.0, True), ("mini", "depth", "m", "rmse", 0.1, False)])
    assert len(check(base, mini_only).missing) == 2  # mini numbers never stand in for real ones


def test_check_cli_exit_codes(tmp_path):
    runner = CliRunner()
    base = tmp_path / "base.csv"
    frame([("real", "cls", "m", "top1", 70.0, True)]).to_csv(base, index=False)
    for value, code in ((71.0, 0), (69.6, 0), (60.0, 1)):
        cur = tmp_path / f"cur{value}.csv"
        frame([("real", "cls", "m", "top1", value, True)]).to_csv(cur, index=False)
        result = runner.invoke(app, ["check", str(cur), "--baseline", str(base)])
        assert result.exit_code == code, result.output
    empty = tmp_path / "other.csv"
    frame([("real", "seg", "m", "miou", 50.0, True)]).to_csv(empty, index=False)
    assert runner.invoke(app, ["check", str(empty), "--baseline", str(base)]).exit_code == 1


def test_check_markdown_summary_lists_regressed_missing_and_improved(tmp_path):
    base = frame([("real", "cls", "m", "top1", 70.0, True), ("real", "depth", "m", "rmse", 0.40, False),
                  ("real", "seg", "m", "miou", 40.0, True), ("real", "vqa", "m", "acc", 60.0, True)])
    cur = frame([("real", "cls", "m", "top1", 65.0, True), ("real", "depth", "m", "rmse", 0.20, False),
                 ("real", "vqa", "m", "acc", 62.0, True)])
    result = check(base, cur)
    assert result.table.set_index("task")["status"].to_dict() == {"cls": "regressed", "depth": "ok",  # within 0.5
                                                                   "seg": "missing", "vqa": "improved"}
    base.to_csv(tmp_path / "base.csv", index=False)
    cur.to_csv(tmp_path / "cur.csv", index=False)
    out = CliRunner().invoke(app, ["check", str(tmp_path / "cur.csv"), "--baseline", str(tmp_path / "base.csv"), "-f", "md"])
    assert out.exit_code == 1
    md = out.output
    assert md.startswith("## evalsuite check against base.csv: ❌ failed") and "1 regressed · 1 missing · 1 improved · 1 ok" in md
    assert md.index("### Regressed") < md.index("### Missing") < md.index("### Improved")
    assert "| real | cls | m | top1 | 70 | 65 | -5 ↑ | 0.5 |" in md and "| real | seg | m | miou | 40 | — | — | 0.5 |" in md
    assert "| real | vqa | m | acc | 60 | 62 | +2 ↑ | 0.5 |" in md and "| depth |" not in md


def test_mini_worlds_are_never_averaged_as_seeds_nor_stand_in_for_each_other():
    """Two generated worlds (other scenes) are two datasets: separate tables and separate cells."""
    rows = pd.concat([frame([("mini", "t", "b", "m", 30.0, True)], world="seed0-small"),
                      frame([("mini", "t", "b", "m", 20.0, True)], world="seed1-small")], ignore_index=True)
    rows.loc[1, "seed"] = 1  # as a probe seed it would be averaged into 25 ± 7
    tables = pivots(rows)
    assert list(tables) == ["mini seed0-small", "mini seed1-small"]
    assert tables["mini seed0-small"].iloc[0, 0] == 30.0 and tables["mini seed1-small"].iloc[0, 0] == 20.0
    assert "## Mini world seed1-small" in render(tables, "md")
    result = check(frame([("mini", "t", "b", "m", 30.0, True)]), frame([("mini", "t", "b", "m", 30.0, True)], world="seed1-small"))
    assert result.missing["world"].tolist() == ["seed0-small"]


def test_record_world_from_the_record_or_from_older_records_mini_folder():
    assert record_world({"source": "mini", "world": "seed2-medium", "root": "/x"}) == "seed2-medium"
    assert record_world({"source": "mini", "root": "/c/imagenet-mini-v4-seed1-medium"}) == "seed1-medium"
    assert record_world({"source": "real", "root": "/data/imagenet"}) == ""
    with pytest.raises(ValueError, match="mini world"):
        record_world({"source": "mini", "root": "/somewhere/else"})


def test_tidy_csv_round_trip_keeps_real_and_mini_worlds(tmp_path):
    rows = pd.concat([frame([("real", "t", "b", "m", 1.0, True)]), frame([("mini", "t", "b", "m", 2.0, True)])],
                     ignore_index=True)
    rows.to_csv(tmp_path / "tidy.csv", index=False)
    back = load_tidy(tmp_path / "tidy.csv")
    assert back["world"].tolist() == ["", "seed0-small"]
    assert check(rows, back).ok and len(check(rows, back).table) == 2
    rows.drop(columns="world").to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(ValueError, match="world"):
        load_tidy(tmp_path / "old.csv")


def test_paired_bootstrap_by_hand():
    from evalsuite.leaderboard import paired_bootstrap

    a = [0.0, 100.0, 0.0, 100.0]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a, [v + 2.5 for v in a]) == pytest.approx((2.5, 2.5, 2.5))  # a constant shift is certain
    # b fixes exactly one of 100 images: the delta is +1 point, and resamples hold 0..~4 copies of that image
    mean, lo, hi = paired_bootstrap([0.0] * 100, [100.0] + [0.0] * 99, resamples=4000)
    assert mean == pytest.approx(1.0) and lo == 0.0 and 2.0 <= hi <= 4.0
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_compare_bounds_the_delta_only_where_both_sides_scored_the_same_images():
    a = frame([("mini", "cls", "m", "top1", 50.0, True), ("mini", "seg", "m", "miou", 40.0, True)])
    b = frame([("mini", "cls", "m", "top1", 60.0, True), ("mini", "seg", "m", "miou", 41.0, True)])
    key = ("mini", "seed0-small", "cls", "m", "top1")
    samples_a = {key: ("manifest", [100.0] * 5 + [0.0] * 5)}
    samples_b = {key: ("manifest", [100.0] * 6 + [0.0] * 4)}
    table = compare(a, b, samples_a, samples_b).set_index("task")
    assert table.loc["cls", "ci95_low"] == 0.0 and table.loc["cls", "ci95_high"] > 10.0
    assert table.loc["seg", ["ci95_low", "ci95_high"]].isna().all()  # no per-sample scores, and it says so
    assert table.loc["seg", "interval"] == "no interval: A and B kept no per-sample scores for this cell"
    other_data = {key: ("another manifest", samples_b[key][1])}
    table = compare(a, b, samples_a, other_data).set_index("task")
    assert table[["ci95_low", "ci95_high"]].isna().all().all()
    assert table.loc["cls", "interval"] == "no interval: A and B were scored on different data"
    assert compare(a, b)["interval"].str.startswith("no interval").all()


def test_compare_cli_bounds_the_delta_from_record_folders(tmp_path, monkeypatch):
    from evalsuite import cli
    from evalsuite.records import write_record

    monkeypatch.setattr(cli.console, "width", 250)  # one line per row, whatever the terminal

    def record(folder, run_id, scores):
        rec = ok_record(run_id, "imagenet/linear", "mae-tiny", "top1", sum(scores) / len(scores), per_sample={"top1": scores})
        write_record(rec, tmp_path / folder / "r.json")

    record("a", "ra", [100.0] * 40 + [0.0] * 60)
    record("b", "rb", [100.0] * 70 + [0.0] * 30)  # fixes 30 images, breaks none
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "95 % interval of the delta" in result.output
    row = next(line for line in result.output.splitlines() if "top1" in line)
    low, high = (float(cell) for cell in row[row.index("[") + 1 : row.index("]")].split(","))
    assert 20 < low < 30 < high < 40


def test_published_numbers_sit_beside_real_cells_only(tmp_path):
    rows = pd.concat([frame([("real", "imagenet/linear", "dinov2-b14@0a1b2c3d", "top1", 83.0, True),
                             ("real", "imagenet/linear", "dinov2-b14@my-run", "top1", 85.0, True),
                             ("real", "imagenet/linear", "dinov2-l14", "top1", 40.0, True),  # random weights
                             ("real", "nyuv2/pixio/dpt", "pixio-h16@9f8e7d6c", "d1", 95.0, True)]),
                      frame([("mini", "imagenet/linear", "dinov2-s14@11112222", "top1", 40.0, True)])], ignore_index=True)
    rows["official"] = [True, False, False, True, True]  # the runner marks runs of the family's official file
    rows.to_csv(tmp_path / "tidy.csv", index=False)
    out = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "tidy.csv"), "--published", "-f", "csv"])
    assert out.exit_code == 0, out.output
    table = pd.read_csv(io.StringIO(out.output)).set_index("backbone")
    assert list(table.index) == ["dinov2-b14", "pixio-h16"]  # not mini, not a custom checkpoint, not random weights
    assert table.loc["dinov2-b14", "published"] == 84.5 and table.loc["dinov2-b14", "difference"] == pytest.approx(-1.5)
    assert table.loc["pixio-h16", "difference"] == pytest.approx(-0.5) and "Pixio paper" in table.loc["pixio-h16", "source"]
    mini = tmp_path / "mini.csv"
    frame([("mini", "imagenet/linear", "dinov2-b14@0a1b2c3d", "top1", 40.0, True)]).assign(official=True).to_csv(mini, index=False)
    none = CliRunner().invoke(app, ["leaderboard", str(mini), "--published"])
    assert none.exit_code == 1 and "mini-world cells never do" in none.output


def test_the_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    import numpy as np

    from evalsuite.leaderboard import paired_bootstrap

    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):  # paired scores whose true mean delta is 1.0
        a = rng.normal(50, 10, 80)
        b = a + rng.normal(1.0, 3.0, 80)
        _, lo, hi = paired_bootstrap(a, b, resamples=1000, seed=trial)
        covered += lo <= 1.0 <= hi
    assert 0.89 <= covered / 200 <= 0.99, covered


def segmentation_samples(preds_and_targets, num_classes=4, absent="exclude"):
    import torch

    from tasks.dense.metrics import SegmentationMeter

    meter = SegmentationMeter(num_classes, absent=absent)
    for pred, target in preds_and_targets:
        meter.update(torch.tensor(pred), torch.tensor(target))
    return meter, meter.dataset_samples()


@pytest.mark.parametrize("absent", ["exclude", "zero"])
def test_the_miou_bootstrap_recomputes_the_dataset_level_miou_of_each_resample(absent):
    import numpy as np
    import torch

    from evalsuite.leaderboard import AreaSamples, paired_bootstrap
    from evalsuite.metrics import dataset_statistic, segmentation_areas
    from tasks.dense.metrics import SegmentationMeter

    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 4, (6, 6)), rng.integers(0, 4, (6, 6))) for _ in range(7)]
    images = [(p, np.where(t == 3, 255, t)) for p, t in images]  # some ignored pixels
    better = [(np.where(rng.random(t.shape) < 0.5, np.where(t == 255, 0, t), p), t) for p, t in images]
    meter_a, samples_a = segmentation_samples(images, absent=absent)
    meter_b, samples_b = segmentation_samples(better, absent=absent)
    assert dataset_statistic(samples_a) == pytest.approx(100 * meter_a.compute()["mIoU"])
    side_a = AreaSamples(segmentation_areas(samples_a), absent, 100.0)
    side_b = AreaSamples(segmentation_areas(samples_b), absent, 100.0)
    point, lo, hi = paired_bootstrap(side_a, side_b, resamples=300, seed=5)

    def brute(pairs, idx):  # a fresh meter on the drawn images: the definition itself
        meter = SegmentationMeter(4, absent=absent)
        for i in idx:
            meter.update(torch.tensor(pairs[i][0]), torch.tensor(pairs[i][1]))
        return 100 * meter.compute()["mIoU"]

    draws = np.random.default_rng(5).integers(0, 7, (300, 7))  # the bootstrap's own draws (one chunk)
    deltas = [brute(better, d) - brute(images, d) for d in draws]
    assert point == pytest.approx(brute(better, range(7)) - brute(images, range(7)))
    assert (lo, hi) == pytest.approx(tuple(np.nanquantile(deltas, [0.025, 0.975])))
    assert paired_bootstrap(side_a, side_a) == (0.0, 0.0, 0.0)  # identical runs: a zero-width interval


def test_a_segmentation_record_keeps_its_areas_and_compare_bounds_its_miou(tmp_path):
    import numpy as np

    from evalsuite.leaderboard import AreaSamples
    from evalsuite.records import write_record

    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 4, (8, 8)), rng.integers(0, 4, (8, 8))) for _ in range(30)]
    improved = [(np.where(rng.random(t.shape) < 0.6, t, p), t) for p, t in pairs]
    for folder, data in (("a", pairs), ("b", improved)):
        meter, samples = segmentation_samples(data)
        miou = 100 * meter.compute()["mIoU"]
        rec = ok_record(folder, "ade20k/pixio/linear", "pixio-tiny", "mIoU", miou, dataset_samples={"mIoU": samples})
        write_record(rec, tmp_path / folder / "r.json")
    table = compare(load_tidy(tmp_path / "a"), load_tidy(tmp_path / "b"),
                    load_samples(tmp_path / "a"), load_samples(tmp_path / "b")).iloc[0]
    assert isinstance(load_samples(tmp_path / "a")[("mini", "seed0-small", "ade20k/pixio/linear", "pixio-tiny", "mIoU")][1],
                      AreaSamples)
    assert table["ci95_low"] > 0 and table["interval"].startswith("[")
    with pytest.raises(ValueError, match="dataset samples of 'mIoU' give"):
        ok_record("c", "ade20k/pixio/linear", "pixio-tiny", "mIoU", 99.0, dataset_samples={"mIoU": samples})
