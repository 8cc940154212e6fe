"""Records → tidy table → leaderboards, checkpoint comparisons and the CI regression check.

The tidy table has one row per (record, metric). Mini-world results and real-data results are
kept apart everywhere, and so are mini worlds of different seeds or sizes (``world``, e.g.
``seed1-medium``): different tables in a leaderboard, different cells in compare/check, never
averaged together as if they were probe seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .environment import environment_differences, flat_environment
from .metrics import miou_of_resamples, segmentation_areas
from .records import RunRecord, iter_records, variant_text

TIDY_COLUMNS = [
    "data", "world", "task", "label", "variant", "task_version", "backbone", "weights", "seed", "metric", "split", "value", "std",
    "higher_is_better", "primary", "shown", "tolerance", "run_id", "finished_at", "official", "environment",
]
# One cell = one experiment. ``task`` is the task label plus the variant that names every score-affecting
# value differing from the protocol's defaults (``imagenet/knn [temperature=0.5]``); ``backbone`` is the
# backbone's label (name, or name@checkpoint). Seeds and re-runs of a cell aggregate; nothing else does.
CELL = ["data", "world", "task", "backbone", "metric"]
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
        try:
            frame = pd.read_csv(source, dtype={"world": str, "variant": str})
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            why = "it is empty" if isinstance(exc, pd.errors.EmptyDataError) else exc
            raise ValueError(f"{source} is not an evalsuite results CSV ({why}): write one with "
                             "`evalsuite leaderboard RESULTS --tidy-csv FILE`") from None
        missing = sorted(set(CELL + ["value", "higher_is_better", "primary"]) - set(frame.columns))
        if missing:
            raise ValueError(f"{source} is not an evalsuite results CSV: missing columns {missing}")
        if "variant" not in frame:
            raise ValueError(f"{source} was written before results carried their variant (which experiment a row is), so "
                             "its rows cannot be matched to one cell each: regenerate it with "
                             "`evalsuite leaderboard RESULTS --tidy-csv FILE`")
        frame = frame.assign(variant=frame["variant"].astype(object).fillna("").astype(str),
                             label=frame["label"] if "label" in frame else frame["task"].str.split(" [", regex=False).str[0])
        if "environment" not in frame:  # written before environments were kept
            frame["environment"] = ""
        # real data has no world, and an old CSV no environment; CSV reads '' as NaN
        return frame.assign(world=frame["world"].fillna(""), environment=frame["environment"].fillna(""))
    if not source.is_dir():
        raise FileNotFoundError(f"no results at {source}")
    rows, skipped = [], []
    for _, rec in iter_records(source, skipped=skipped):
        if rec.status != "ok":
            continue
        variant = variant_text(rec.task["variant"])
        for m in rec.metrics:
            rows.append({
                "data": rec.data["source"], "world": record_world(rec.data),
                "task": cell_task(rec.task["label"], variant), "label": rec.task["label"], "variant": variant,
                "task_version": rec.task["version"],
                "backbone": rec.backbone.get("label", rec.backbone["name"]), "weights": rec.backbone["weights"],
                "seed": rec.seed,
                "metric": m["name"], "split": m["split"], "value": m["value"], "std": m.get("std"),
                "higher_is_better": m["higher_is_better"], "primary": m["primary"],
                "shown": m["primary"] or m["name"] in rec.task.get("leaderboard_metrics", ()),
                "tolerance": rec.task["tolerance"], "run_id": rec.run_id, "finished_at": rec.finished_at,
                "official": bool(rec.backbone.get("official", False)),
                "environment": flat_environment(rec.environment),
            })
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame.attrs["skipped"] = skipped  # files that are not readable records: the CLI names each one
    return frame


def cell_task(label: str, variant: str) -> str:
    """The task column of a cell: its label, and its variant where it is not the protocol's default."""
    return f"{label} [{variant}]" if variant else label


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
            out.append({"backbone": rec.backbone.get("label", rec.backbone["name"]),
                        "task": cell_task(rec.task["label"], variant_text(rec.task["variant"])),
                        "finished_at": rec.finished_at, "error": (rec.error or "").splitlines()[0],
                        "good_record": str(good) if last_good else None, "path": str(path)})
    return out


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep each task's newest version only (a version bump retires older numbers), then the newest
    run of every (cell, seed, weights): re-runs replace, seeds add up."""
    if frame.empty:
        return frame
    if "task_version" in frame:
        newest = frame.groupby(["data", "world", "label" if "label" in frame else "task"])["task_version"].transform("max")
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
    extra = {c: (c, "first") for c in ("tolerance", "shown", "label", "variant") if c in frame}
    if "environment" in frame:  # the newest record's (rows are in time order after `latest`)
        extra["environment"] = ("environment", "last")
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
    if source == "bench":
        return "Throughput (evalsuite bench, synthetic images)"
    return f"Mini world {world} (generated data — not comparable to published numbers)"


def pivots(frame: pd.DataFrame, column: str = "value") -> dict[str, pd.DataFrame]:
    """One backbone × task table for real data ('real') and one per mini world ('mini seed0-small'):
    primary metrics, and the ones the task lists in ``leaderboard_metrics`` (e.g. RMSE beside δ1).
    ``column="std"`` gives the matching tables of standard deviations over seeds (NaN where there is
    a single seed).

    A variant of a task (a cell whose score-affecting values differ from the protocol's defaults) is a
    row of its own, named ``backbone [variant]``: two experiments never share a row."""
    primary = cells(latest(frame))
    shown = primary["shown"] if "shown" in primary else primary["primary"]
    primary = primary[shown.astype(bool)]
    if "label" in primary and "variant" in primary:
        variant = primary["variant"].fillna("").astype(str)
        primary = primary.assign(task=primary["label"],
                                 backbone=primary["backbone"] + variant.map(lambda v: f" [{v}]" if v else ""))
    tables = {}
    worlds = sorted(set(zip(primary["data"], primary["world"])), key=lambda sw: (sw[0] != "real", sw[1]))
    for source, world in worlds:
        part = primary[(primary["data"] == source) & (primary["world"] == world)]
        part = part.assign(column=part["task"] + " · " + part["metric"] + _arrow(part["higher_is_better"]))
        tables[table_key(source, world)] = part.pivot_table(index="backbone", columns="column", values=column, aggfunc="first",
                                          dropna=False).reindex(columns=sorted(part["column"].unique()))
    return tables


PUBLISHED = Path(__file__).resolve().parent.parent / "results" / "published.csv"
PUBLISHED_COLUMNS = ["backbone", "task", "protocol", "metric", "split", "value", "source"]


def load_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """Published numbers (backbone, task, protocol, metric, split, value, source): the fact sheet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no published numbers at {path} (give --published-csv PATH)")
    table = pd.read_csv(path)
    lacking = [c for c in PUBLISHED_COLUMNS if c not in table]
    if lacking:
        raise ValueError(f"{path} lacks the columns {', '.join(lacking)} (expected {', '.join(PUBLISHED_COLUMNS)})")
    return table


def beside_published(frame: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Our real-data cells run with the family's official checkpoint (records say ``official``; random
    or other weights never match) next to the published number of the same backbone, task label and
    metric: ours, published, ours − published. Mini cells never get one — generated data is not the
    benchmark."""
    official = frame[frame["official"].fillna(False).astype(bool)] if "official" in frame else frame.iloc[0:0]
    ours = cells(latest(official[official["data"] == "real"]))
    ours = ours.assign(label=ours["backbone"], backbone=ours["backbone"].str.split("@").str[0])
    pub = published.assign(label=published["task"] + "/" + published["protocol"])
    merged = ours.merge(pub.rename(columns={"value": "published", "split": "published_split", "label": "published_label"}),
                        left_on=["task", "backbone", "metric"], right_on=["published_label", "backbone", "metric"],
                        suffixes=("", "_published"))
    merged = merged.rename(columns={"value": "ours"})
    merged["difference"] = merged["ours"] - merged["published"]
    return merged[["backbone", "task", "metric", "ours", "std", "published", "difference", "higher_is_better",
                   "published_split", "source"]].sort_values(["task", "backbone", "metric"]).reset_index(drop=True)


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
@dataclass(frozen=True)
class AreaSamples:
    """Per-image areas (N×3×C: intersection, union, labelled) of a dataset-level mIoU: what a
    bootstrap resamples (images) before recomputing the statistic (summed I over summed U)."""

    areas: torch.Tensor
    absent: str
    scale: float

    def __len__(self) -> int:
        return self.areas.shape[0]

    def statistic(self, weights: torch.Tensor) -> torch.Tensor:
        return miou_of_resamples(self.areas, weights, self.absent, self.scale)


def paired_bootstrap(a, b, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Delta ``b − a`` over paired samples (the same images scored by two runs) and its percentile
    bootstrap interval: samples are resampled with replacement, pairs kept together, so the interval
    reflects which images happened to be in the test set and not only each run's own noise. Scores
    give the mean delta; `AreaSamples` give the delta of the dataset-level statistic, recomputed on
    every resample."""
    if isinstance(a, AreaSamples) or isinstance(b, AreaSamples):
        return _bootstrap_areas(a, b, resamples, level, seed)
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired samples must be two equal-length, non-empty vectors, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(d))  # bounded memory for 50k-image test sets
    means = np.concatenate([d[rng.integers(0, len(d), (min(chunk, resamples - i), len(d)))].mean(axis=1)
                            for i in range(0, resamples, chunk)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def _resample_counts(n: int, resamples: int, seed: int):
    """Chunks of R×n bootstrap counts (how often each sample is drawn), bounded in memory."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        counts = np.zeros((rows, n))
        np.add.at(counts, (np.arange(rows)[:, None], rng.integers(0, n, (rows, n))), 1)
        yield torch.from_numpy(counts)


def _bootstrap_areas(a, b, resamples: int, level: float, seed: int) -> tuple[float, float, float]:
    if not (isinstance(a, AreaSamples) and isinstance(b, AreaSamples)) or len(a) != len(b) or len(a) == 0:
        raise ValueError("a dataset-level statistic pairs only with the same statistic on the same, non-empty images")
    whole = torch.ones(1, len(a), dtype=torch.float64)
    point = (b.statistic(whole) - a.statistic(whole)).item()
    deltas = [(b.statistic(c) - a.statistic(c)).numpy() for c in _resample_counts(len(a), resamples, seed)]
    lo, hi = np.nanquantile(np.concatenate(deltas), [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def bootstrap_interval(samples, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of one cell's metric over its test samples (an error bar for
    the cell itself; `paired_bootstrap` bounds a difference between two cells)."""
    if isinstance(samples, AreaSamples):
        values = np.concatenate([samples.statistic(c).numpy() for c in _resample_counts(len(samples), resamples, seed)])
    else:
        scores = np.asarray(samples, dtype=np.float64)
        rng, chunk = np.random.default_rng(seed), max(1, 2_000_000 // len(scores))
        values = np.concatenate([scores[rng.integers(0, len(scores), (min(chunk, resamples - i), len(scores)))].mean(axis=1)
                                 for i in range(0, resamples, chunk)])
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def load_samples(source: str | Path, frame: pd.DataFrame | None = None) -> dict[tuple, tuple[str, object]]:
    """Per-sample scores of every cell of a record folder (CSV files carry none): cell key →
    (data manifest, scores averaged over the cell's run seeds — or, for a dataset-level metric,
    `AreaSamples` with areas averaged over seeds). Cells whose records disagree on the data, or lack
    per-sample scores, are left out. ``frame``: the folder's `load_tidy`, if already read."""
    source = Path(source)
    if not source.is_dir():
        return {}
    runs = {rec.run_id: (rec.data["identity"], rec.per_sample, rec.dataset_samples)
            for _, rec in iter_records(source, skipped=[])
            if rec.status == "ok" and (rec.per_sample or rec.dataset_samples)}
    out = {}
    for key, group in latest(load_tidy(source) if frame is None else frame).groupby(CELL):
        found = [runs.get(r) for r in group["run_id"]]
        metric = key[-1]
        if any(f is None for f in found):
            continue
        manifests = {f[0] for f in found}
        if len(manifests) != 1:
            continue
        if all(metric in f[1] for f in found):
            scores = [np.asarray(f[1][metric]) for f in found]
            if len({len(s) for s in scores}) == 1:
                out[key] = (manifests.pop(), np.mean(scores, axis=0))
        elif all(metric in f[2] for f in found):
            entries = [f[2][metric] for f in found]
            areas = [segmentation_areas(e) for e in entries]
            if len({a.shape for a in areas}) == 1 and len({(e["absent"], e["scale"]) for e in entries}) == 1:
                out[key] = (manifests.pop(), AreaSamples(torch.stack(areas).mean(dim=0), entries[0]["absent"],
                                                         entries[0]["scale"]))
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
    bounds = [_delta_interval(row, keys, samples_a or {}, samples_b or {}) for _, row in merged.iterrows()]
    merged["ci95_low"] = [lo for lo, _, _ in bounds]
    merged["ci95_high"] = [hi for _, hi, _ in bounds]
    merged["interval"] = [note for _, _, note in bounds]
    cols += ["ci95_low", "ci95_high", "interval"]
    return merged[cols].sort_values(keys).reset_index(drop=True)


def _delta_interval(row: pd.Series, keys: list[str], samples_a: dict, samples_b: dict) -> tuple[float, float, str]:
    """(low, high, note): the paired-bootstrap 95 % interval of the delta, or NaNs and why there is
    none — never a zero that could read as "no difference"."""
    def cell(side: str) -> tuple:
        backbone = row["backbone"] if "backbone" in keys else row[f"backbone_{side}"]
        return row["data"], row["world"], row["task"], backbone, row["metric"]

    a, b = samples_a.get(cell("a")), samples_b.get(cell("b"))
    none = float("nan"), float("nan")
    if a is None or b is None:
        sides = " and ".join(side for side, s in (("A", a), ("B", b)) if s is None)
        return *none, f"no interval: {sides} kept no per-sample scores for this cell"
    if a[0] != b[0]:
        return *none, "no interval: A and B were scored on different data"
    if len(a[1]) != len(b[1]) or type(a[1]) is not type(b[1]):
        return *none, "no interval: the two sides' samples do not pair"
    _, lo, hi = paired_bootstrap(a[1], b[1])
    return lo, hi, f"[{lo:.4g}, {hi:.4g}]"


@dataclass
class CheckResult:
    table: pd.DataFrame
    regressions: pd.DataFrame
    missing: pd.DataFrame
    # per moved row (regressed or improved): what differs between the baseline's environment and now
    environment_differences: dict = field(default_factory=dict)

    def moved_environments(self) -> list[str]:
        """One line per regressed cell: its environment differences (package versions, device,
        threads), the first suspects when a number moved without a code change."""
        out = []
        for i, r in self.regressions.iterrows():
            out.append(f"{r['backbone']} × {r['task']} ({r['metric']}): environment differences: "
                       + "; ".join(self.environment_differences.get(i, ["unknown"])))
        return out

    @property
    def ok(self) -> bool:
        return self.regressions.empty and self.missing.empty

    def markdown(self, title: str = "evalsuite check") -> str:
        """A summary for a pull request or ``$GITHUB_STEP_SUMMARY``: the verdict, then the regressed,
        missing and improved cells (beyond tolerance), each a table; cells within tolerance are counted."""
        counts = self.table["status"].value_counts()
        verdict = "✅ passed" if self.ok else "❌ failed"
        lines = [f"## {title}: {verdict}", "",
                 " · ".join(f"{counts.get(s, 0)} {s}" for s in ("regressed", "missing", "improved", "ok")), ""]
        for status, heading in (("regressed", "Regressed"), ("missing", "Missing"), ("improved", "Improved")):
            part = self.table[self.table["status"] == status]
            if part.empty:
                continue
            lines += [f"### {heading}", "", "| data | task | backbone | metric | baseline | now | delta | tolerance |",
                      "|---|---|---|---|---|---|---|---|"]
            for _, r in part.iterrows():
                data = r["data"] + (f" {r['world']}" if r["world"] else "")
                now = "—" if pd.isna(r["value"]) else f"{r['value']:.4g}"
                delta = "—" if pd.isna(r["delta"]) else f"{r['delta']:+.4g} {'↑' if r['higher_is_better'] else '↓'}"
                lines.append(f"| {data} | {_md_cell(r['task'])} | {_md_cell(r['backbone'])} | {r['metric']} | "
                             f"{r['value_base']:.4g} | {now} | {delta} | {r['tolerance']:.4g} |")
            lines.append("")
        if not self.regressions.empty:
            lines += ["### Environment differences of the regressed cells (baseline → now)", ""]
            lines += [f"- {_md_cell(line)}" for line in self.moved_environments()] + [""]
        return "\n".join(lines)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def check(baseline: pd.DataFrame, current: pd.DataFrame, tolerance: float | None = None) -> CheckResult:
    """Primary metrics of ``current`` against ``baseline``: regressions beyond tolerance or missing cells
    fail, and so does a baseline without a single cell (a check that checks nothing is no pass)."""
    base = cells(latest(baseline))
    base = base[base["primary"].astype(bool)]
    if base.empty:
        raise ValueError("the baseline has no cells: nothing would be checked")
    cur = cells(latest(current))
    cur_env = cur["environment"] if "environment" in cur else pd.Series("", index=cur.index)
    base_env = base["environment"] if "environment" in base else pd.Series("", index=base.index)
    merged = base.assign(environment=base_env).merge(cur[CELL + ["value"]].assign(environment=cur_env), on=CELL,
                                                     how="left", suffixes=("_base", ""))
    tol = merged["tolerance"] if tolerance is None and "tolerance" in merged else pd.Series(tolerance or 0.0, index=merged.index)
    sign = merged["higher_is_better"].astype(bool).map({True: 1.0, False: -1.0})
    merged["delta"] = merged["value"] - merged["value_base"]
    merged["tolerance"] = tol.fillna(0.0)
    merged["status"] = "ok"
    gain = merged["delta"] * sign
    merged.loc[gain > merged["tolerance"], "status"] = "improved"
    merged.loc[gain < -merged["tolerance"], "status"] = "regressed"
    merged.loc[merged["value"].isna(), "status"] = "missing"
    table = merged[CELL + ["value_base", "value", "delta", "tolerance", "higher_is_better", "status"]]
    differences = {}
    for i, row in merged[merged["status"].isin(["regressed", "improved"])].iterrows():
        if not row["environment_base"]:
            differences[i] = ["the baseline does not record its environment (regenerate it with this evalsuite)"]
        else:
            differences[i] = environment_differences(row["environment_base"], row["environment"]) or ["none"]
    return CheckResult(table, table[table["status"] == "regressed"], table[table["status"] == "missing"], differences)
