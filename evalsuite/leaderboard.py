"""Records → tidy table → leaderboards, checkpoint comparisons and the CI regression check.

The tidy table has one row per (record, metric). Mini-world results and real-data results are
kept apart everywhere, and so are mini worlds of different seeds or sizes (``world``, e.g.
``seed1-medium``): different tables in a leaderboard, different cells in compare/check, never
averaged together as if they were probe seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .records import RunRecord, iter_records

TIDY_COLUMNS = [
    "data", "world", "task", "task_version", "backbone", "weights", "seed", "metric", "split", "value", "std",
    "higher_is_better", "primary", "shown", "tolerance", "run_id", "finished_at",
]
CELL = ["data", "world", "task", "backbone", "metric"]  # backbone = its label: name, or name@checkpoint
MINI_FOLDER = re.compile(r"-seed(\d+)-(small|medium|large)$")


def record_world(data: dict) -> str:
    """``seed<S>-<size>`` of a mini-world record ('' for real data); records written before the
    field existed are read from their mini folder's name (``<name>-v<version>-seed<S>-<size>``)."""
    if data["source"] != "mini":
        return ""
    if "world" in data:
        return data["world"]
    match = MINI_FOLDER.search(Path(data["root"]).name)
    if match is None:
        raise ValueError(f"cannot tell the mini world of a record from its data root {data['root']!r}")
    return f"seed{match[1]}-{match[2]}"


def load_tidy(source: str | Path) -> pd.DataFrame:
    """A tidy frame from a folder of records or a tidy CSV; failed runs never contribute."""
    source = Path(source)
    if source.is_file():
        frame = pd.read_csv(source, dtype={"world": str})
        missing = sorted(set(CELL + ["value", "higher_is_better", "primary"]) - set(frame.columns))
        if missing:
            raise ValueError(f"{source} is not an evalsuite results CSV: missing columns {missing}")
        return frame.assign(world=frame["world"].fillna(""))  # real data has no world; CSV reads '' as NaN
    if not source.is_dir():
        raise FileNotFoundError(f"no results at {source}")
    rows, skipped = [], []
    for _, rec in iter_records(source, skipped=skipped):
        if rec.status != "ok":
            continue
        for m in rec.metrics:
            rows.append({
                "data": rec.data["source"], "world": record_world(rec.data),
                "task": rec.task["label"], "task_version": rec.task["version"],
                "backbone": rec.backbone.get("label", rec.backbone["name"]), "weights": rec.backbone["weights"],
                "seed": rec.seed,
                "metric": m["name"], "split": m["split"], "value": m["value"], "std": m.get("std"),
                "higher_is_better": m["higher_is_better"], "primary": m["primary"],
                "shown": m["primary"] or m["name"] in rec.task.get("leaderboard_metrics", ()),
                "tolerance": rec.task["tolerance"], "run_id": rec.run_id, "finished_at": rec.finished_at,
            })
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame.attrs["skipped"] = skipped  # files that are not readable records: the CLI names each one
    return frame


def failed_attempts(source: str | Path) -> list[dict]:
    """Failed runs whose cell has no newer good record: each with its cell, time and error's first
    line, so that a leaderboard never shows a good number without saying a later attempt failed."""
    source = Path(source)
    if not source.is_dir():
        return []
    out = []
    for path, rec in iter_records(source, failed=True, skipped=[]):
        if rec.status != "failed":
            continue
        good = path.with_name(path.name.removesuffix(".failed.json") + ".json")
        last_good = RunRecord.load(good).finished_at if good.is_file() else None
        if last_good is None or last_good <= rec.finished_at:
            out.append({"backbone": rec.backbone.get("label", rec.backbone["name"]), "task": rec.task["label"],
                        "finished_at": rec.finished_at, "error": (rec.error or "").splitlines()[0],
                        "good_record": str(good) if last_good else None, "path": str(path)})
    return out


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep each task's newest version only (a version bump retires older numbers), then the newest
    run of every (cell, seed, weights): re-runs replace, seeds add up."""
    if frame.empty:
        return frame
    if "task_version" in frame:
        newest = frame.groupby(["data", "world", "task"])["task_version"].transform("max")
        frame = frame[frame["task_version"] == newest]
    if "finished_at" not in frame:
        return frame
    keys = CELL + ["seed", "weights"]
    return frame.sort_values("finished_at").drop_duplicates(keys, keep="last")


def cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std per cell: the std over the cell's records (one per seed), or, for a single record,
    the std it carries itself (a run that repeated its training over ``seeds``)."""
    if frame.empty:
        return pd.DataFrame(columns=CELL + ["value", "std", "n", "higher_is_better", "primary", "tolerance"])
    extra = {c: (c, "first") for c in ("tolerance", "shown") if c in frame}
    if "std" in frame:
        extra["record_std"] = ("std", "first")
    grouped = frame.groupby(CELL, as_index=False).agg(
        value=("value", "mean"), std=("value", "std"), n=("value", "size"),
        higher_is_better=("higher_is_better", "first"), primary=("primary", "first"), **extra,
    )
    if "record_std" in grouped:
        single = grouped["n"] == 1
        grouped.loc[single, "std"] = pd.to_numeric(grouped.loc[single, "record_std"], errors="coerce")
        grouped = grouped.drop(columns="record_std")
    return grouped


def table_key(source: str, world: str) -> str:
    return f"{source} {world}" if world else source


def table_title(key: str) -> str:
    source, _, world = key.partition(" ")
    if source == "real":
        return "Real data"
    return f"Mini world {world} (generated data — not comparable to published numbers)"


def pivots(frame: pd.DataFrame, column: str = "value") -> dict[str, pd.DataFrame]:
    """One backbone × task table for real data ('real') and one per mini world ('mini seed0-small'):
    primary metrics, and the ones the task lists in ``leaderboard_metrics`` (e.g. RMSE beside δ1).
    ``column="std"`` gives the matching tables of standard deviations over seeds (NaN where there is
    a single seed)."""
    primary = cells(latest(frame))
    shown = primary["shown"] if "shown" in primary else primary["primary"]
    primary = primary[shown.astype(bool)]
    tables = {}
    worlds = sorted(set(zip(primary["data"], primary["world"])), key=lambda sw: (sw[0] != "real", sw[1]))
    for source, world in worlds:
        part = primary[(primary["data"] == source) & (primary["world"] == world)]
        part = part.assign(column=part["task"] + " · " + part["metric"] + _arrow(part["higher_is_better"]))
        tables[table_key(source, world)] = part.pivot_table(index="backbone", columns="column", values=column, aggfunc="first",
                                          dropna=False).reindex(columns=sorted(part["column"].unique()))
    return tables


def _arrow(higher: pd.Series) -> pd.Series:
    return higher.astype(bool).map({True: " ↑", False: " ↓"})


def render(tables: dict[str, pd.DataFrame], fmt: str, stds: dict[str, pd.DataFrame] | None = None) -> str:
    """Markdown/HTML cells read ``mean ± std`` where a cell has several seeds; CSV gets a ``… std`` column."""
    out = []
    for key, table in tables.items():
        shown = table.round(4)
        spread = (stds or {}).get(key)
        spread = spread.reindex_like(table).round(4) if spread is not None else None
        if fmt == "md":
            out.append(f"## {table_title(key)}\n\n{_markdown(shown, spread)}\n")
        elif fmt == "html":
            out.append(f"<h2>{table_title(key)}</h2>\n{_cells_text(shown, spread).to_html()}")
        elif fmt == "csv":
            if spread is not None and spread.notna().any().any():
                shown = shown.join(spread.add_suffix(" std"))
            source, _, world = key.partition(" ")
            out.append(shown.assign(data=source, world=world).reset_index().to_csv(index=False))
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return "\n".join(out)


def format_cell(value: float, std: float | None = None, spec: str = "g") -> str:
    if pd.isna(value):
        return "—"
    return f"{value:{spec}}" + ("" if std is None or pd.isna(std) else f" ± {std:.2g}")


def _cells_text(table: pd.DataFrame, spread: pd.DataFrame | None) -> pd.DataFrame:
    text = table.copy().astype(object)
    for col in table.columns:
        text[col] = [format_cell(v, None if spread is None else spread.at[i, col]) for i, v in table[col].items()]
    return text


def _markdown(table: pd.DataFrame, spread: pd.DataFrame | None = None) -> str:
    text = _cells_text(table, spread)
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(idx), *row]) + " |" for idx, row in zip(text.index, text.to_numpy())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# compare and check
# ---------------------------------------------------------------------------------------
def paired_bootstrap(a, b, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b − a`` over paired samples (the same images scored by two runs) and its percentile
    bootstrap interval: samples are resampled with replacement, pairs kept together, so the interval
    reflects which images happened to be in the test set and not only each run's own noise."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired samples must be two equal-length, non-empty vectors, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(d))  # bounded memory for 50k-image test sets
    means = np.concatenate([d[rng.integers(0, len(d), (min(chunk, resamples - i), len(d)))].mean(axis=1)
                            for i in range(0, resamples, chunk)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def load_samples(source: str | Path, frame: pd.DataFrame | None = None) -> dict[tuple, tuple[str, np.ndarray]]:
    """Per-sample scores of every cell of a record folder (CSV files carry none): cell key →
    (data manifest, scores averaged over the cell's run seeds). Cells whose records disagree on the
    data, or lack per-sample scores, are left out. ``frame``: the folder's `load_tidy`, if already read."""
    source = Path(source)
    if not source.is_dir():
        return {}
    runs = {rec.run_id: (rec.data["identity"], rec.per_sample)
            for _, rec in iter_records(source, skipped=[]) if rec.status == "ok" and rec.per_sample}
    out = {}
    for key, group in latest(load_tidy(source) if frame is None else frame).groupby(CELL):
        found = [runs.get(r) for r in group["run_id"]]
        metric = key[-1]
        if any(f is None or metric not in f[1] for f in found):
            continue
        manifests, scores = {f[0] for f in found}, [np.asarray(f[1][metric]) for f in found]
        if len(manifests) == 1 and len({len(s) for s in scores}) == 1:
            out[key] = (manifests.pop(), np.mean(scores, axis=0))
    return out


def as_task(frame: pd.DataFrame, samples: dict, task: str, label: str) -> tuple[pd.DataFrame, dict]:
    """Only ``task``'s cells of one side, renamed ``label``: how a control (``vqa/adapter/scratch/shuffled``)
    pairs with the model it controls (``.../paired``) in `compare`, samples and all."""
    kept = frame[frame["task"] == task]
    if kept.empty:
        raise ValueError(f"no cells of task {task!r}; the tasks there are: {', '.join(sorted(frame['task'].unique())) or 'none'}")
    renamed = {(data, world, label, *rest): value for (data, world, t, *rest), value in samples.items() if t == task}
    return kept.assign(task=label), renamed


def compare(a: pd.DataFrame, b: pd.DataFrame, samples_a: dict | None = None, samples_b: dict | None = None) -> pd.DataFrame:
    """Per (data, world, task, metric[, backbone]) deltas b − a, with the better side named.

    When the two sides share backbone names the comparison is per backbone; when they do not
    (two checkpoints of one model under different names) it is per task. With per-sample scores of
    both sides (`load_samples`) on the same data, ``ci95_low``/``ci95_high`` bound the delta (paired
    bootstrap over samples); elsewhere they are NaN.
    """
    ca, cb = cells(latest(a)), cells(latest(b))
    keys = CELL if set(ca["backbone"]) & set(cb["backbone"]) else ["data", "world", "task", "metric"]
    if keys != CELL:
        for c in (ca, cb):
            dup = c.duplicated(keys)
            if dup.any():
                raise ValueError("each side has several backbones per task and no backbone names in common: nothing to pair")
    merged = ca.merge(cb, on=keys, how="outer", suffixes=("_a", "_b"))
    merged["higher_is_better"] = merged["higher_is_better_a"].fillna(merged["higher_is_better_b"]).astype(bool)
    merged["delta"] = merged["value_b"] - merged["value_a"]
    sign = merged["higher_is_better"].map({True: 1.0, False: -1.0})
    gain = merged["delta"] * sign
    merged["better"] = gain.map(lambda g: "b" if g > 0 else "a" if g < 0 else ("=" if g == 0 else "?"))
    cols = keys + [c for c in ("backbone_a", "backbone_b") if c in merged] + ["value_a", "value_b", "delta", "higher_is_better", "better"]
    if samples_a and samples_b:
        bounds = [_delta_interval(row, keys, samples_a, samples_b) for _, row in merged.iterrows()]
        merged["ci95_low"] = [lo for lo, _ in bounds]
        merged["ci95_high"] = [hi for _, hi in bounds]
        cols += ["ci95_low", "ci95_high"]
    return merged[cols].sort_values(keys).reset_index(drop=True)


def _delta_interval(row: pd.Series, keys: list[str], samples_a: dict, samples_b: dict) -> tuple[float, float]:
    def cell(side: str) -> tuple:
        backbone = row["backbone"] if "backbone" in keys else row[f"backbone_{side}"]
        return row["data"], row["world"], row["task"], backbone, row["metric"]

    a, b = samples_a.get(cell("a")), samples_b.get(cell("b"))
    if a is None or b is None or a[0] != b[0] or len(a[1]) != len(b[1]):
        return float("nan"), float("nan")
    _, lo, hi = paired_bootstrap(a[1], b[1])
    return lo, hi


@dataclass
class CheckResult:
    table: pd.DataFrame
    regressions: pd.DataFrame
    missing: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.regressions.empty and self.missing.empty


def check(baseline: pd.DataFrame, current: pd.DataFrame, tolerance: float | None = None) -> CheckResult:
    """Primary metrics of ``current`` against ``baseline``: regressions beyond tolerance or missing cells
    fail, and so does a baseline without a single cell (a check that checks nothing is no pass)."""
    base = cells(latest(baseline))
    base = base[base["primary"].astype(bool)]
    if base.empty:
        raise ValueError("the baseline has no cells: nothing would be checked")
    cur = cells(latest(current))
    merged = base.merge(cur[CELL + ["value"]], on=CELL, how="left", suffixes=("_base", ""))
    tol = merged["tolerance"] if tolerance is None and "tolerance" in merged else pd.Series(tolerance or 0.0, index=merged.index)
    sign = merged["higher_is_better"].astype(bool).map({True: 1.0, False: -1.0})
    merged["delta"] = merged["value"] - merged["value_base"]
    merged["tolerance"] = tol.fillna(0.0)
    merged["status"] = "ok"
    worse = (merged["delta"] * sign) < -merged["tolerance"]
    merged.loc[worse, "status"] = "regressed"
    merged.loc[merged["value"].isna(), "status"] = "missing"
    table = merged[CELL + ["value_base", "value", "delta", "tolerance", "higher_is_better", "status"]]
    return CheckResult(table, table[table["status"] == "regressed"], table[table["status"] == "missing"])
