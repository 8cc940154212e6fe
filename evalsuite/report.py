"""`evalsuite report`: one self-contained HTML file (no network, no JavaScript) that a person reads.

Plots are matplotlib figures inlined as SVG: the file opens offline, text in the plots stays
selectable and sharp at any zoom, and matplotlib is already installed (mmengine needs it). Plotly
would make the plots interactive at the price of ~3.5 MB of embedded JavaScript per report.

Sections: leaderboards (± std over seeds), per-task bar charts with 95 % bootstrap error bars (over
test samples, where the records keep them), checkpoints over training (``name@label`` series of one
backbone), the published-number comparison for real data, and every record's provenance.
"""

from __future__ import annotations

import html
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import __version__
from .leaderboard import (
    PUBLISHED,
    beside_published,
    bootstrap_interval,
    cells,
    format_cell,
    latest,
    load_published,
    load_samples,
    load_tidy,
    pivots,
    table_title,
)
from .records import iter_records

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: .6em 0; display: block; overflow-x: auto; } th, td { border: 1px solid #ccc; padding: 3px 8px; }
td { text-align: right; } th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #666; } figure { margin: 1em 0; } details { margin: .3em 0; } pre { font-size: 12px; overflow-x: auto; }
"""


def build(sources: list[Path], published: Path | None = PUBLISHED) -> str:
    """The report of the records under ``sources`` (folders or tidy CSVs)."""
    frames, samples = [], {}
    for source in sources:
        frame = load_tidy(source)
        frames.append(frame)
        samples.update(load_samples(source, frame))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise ValueError(f"no finished results in {', '.join(map(str, sources))}: nothing to report")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>evalsuite report</h1><p class='note'>{now} · evalsuite {__version__} · "
             f"{html.escape(', '.join(map(str, sources)))} · {frame['run_id'].nunique()} records</p>"]
    parts.append("<h2 id='leaderboards'>Leaderboards</h2>"
                 "<p class='note'>Mean ± std over seeds; mini-world tables hold generated data, never comparable to "
                 "published numbers.</p>")
    parts.append(leaderboard_html(frame))
    parts.append("<h2 id='tasks'>Per task</h2><p class='note'>Bars: the primary metric; error bars: its 95 % "
                 "percentile-bootstrap interval over the test samples. A bar without one says so.</p>")
    parts += [task_figure(key, part, samples) for key, part in _primary_cells(frame)]
    series = checkpoint_series(frame)
    parts.append("<h2 id='checkpoints'>Checkpoints over training</h2>")
    parts += [series_figure(name, rows) for name, rows in series.items()] or \
        ["<p class='note'>No backbone has two or more labelled checkpoints (<code>name@label</code>).</p>"]
    parts.append("<h2 id='published'>Published numbers</h2>")
    parts.append(published_section(frame, published))
    parts.append("<h2 id='provenance'>Provenance</h2>")
    parts.append(provenance_section(sources))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>evalsuite report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def leaderboard_html(frame: pd.DataFrame) -> str:
    """One table per world and task (a row of every task's metrics fits no page), cells ``mean ± std``."""
    out = []
    values, spreads = pivots(frame), pivots(frame, "std")
    for key, table in values.items():
        out.append(f"<h3 class='world'>{html.escape(table_title(key))}</h3>")
        for task in dict.fromkeys(col.split(" · ")[0] for col in table.columns):
            columns = [col for col in table.columns if col.split(" · ")[0] == task]
            part = table[columns].dropna(how="all")
            spread = spreads[key].reindex_like(table)[columns].loc[part.index]
            text = pd.DataFrame({col.split(" · ", 1)[1]: [format_cell(v, spread.at[i, col], ".4g") for i, v in part[col].items()]
                                 for col in columns}, index=part.index)
            text.index.name = "backbone"
            out.append(f"<h4>{html.escape(task)}</h4>{text.to_html(classes='leaderboard', escape=True)}")
    return "".join(out)


def _primary_cells(frame: pd.DataFrame):
    primary = cells(latest(frame))
    primary = primary[primary["primary"].astype(bool)]
    for (data, world, task), part in primary.groupby(["data", "world", "task"], sort=True):
        yield (data, world, task), part.sort_values("backbone")


def task_figure(key: tuple, part: pd.DataFrame, samples: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, world, task = key
    metric = part["metric"].iloc[0]
    values, errors, missing = [], [[], []], []
    for _, row in part.iterrows():
        found = samples.get((data, world, task, row["backbone"], metric))
        values.append(row["value"])
        if found is None:
            errors[0].append(0.0)
            errors[1].append(0.0)
            missing.append(row["backbone"])
            continue
        lo, hi = bootstrap_interval(found[1])
        errors[0].append(max(0.0, row["value"] - lo))
        errors[1].append(max(0.0, hi - row["value"]))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(part) + 1.2))
    ax.barh(part["backbone"], values, xerr=errors, color="#4c72b0", ecolor="#222", capsize=3)
    arrow = "↑" if part["higher_is_better"].iloc[0] else "↓"
    ax.set_xlabel(f"{metric} {arrow}")
    ax.invert_yaxis()
    ax.set_title(f"{task} — {'real data' if data == 'real' else 'mini world ' + world}", fontsize=10)
    fig.tight_layout()
    note = (f"<p class='note'>No interval (no per-sample scores in the records) for: {html.escape(', '.join(missing))}.</p>"
            if missing else "")
    return f"<figure class='task-plot'>{_svg(fig)}</figure>{note}"


def checkpoint_series(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per backbone name with two or more ``@label`` checkpoints: their primary metrics in training
    order (the label's first number — ``ckpt-100k`` before ``ckpt-200k`` — then the name)."""
    primary = cells(latest(frame))
    primary = primary[primary["primary"].astype(bool) & primary["backbone"].str.contains("@")]
    out = {}
    for name, part in primary.assign(name=primary["backbone"].str.split("@").str[0],
                                      checkpoint=primary["backbone"].str.split("@", n=1).str[1]).groupby("name"):
        if part["checkpoint"].nunique() >= 2:
            out[name] = part.assign(order=part["checkpoint"].map(_training_order))
    return out


def _training_order(label: str) -> tuple:
    number = re.search(r"(\d+(?:\.\d+)?)\s*([kKmM]?)", label)
    if number is None:
        return (float("inf"), label)
    scale = {"k": 1e3, "m": 1e6}.get(number.group(2).lower(), 1)
    return (float(number.group(1)) * scale, label)


def series_figure(name: str, rows: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(rows.groupby(["data", "world", "task", "metric"]).groups)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3), squeeze=False)
    for ax, (data, world, task, metric) in zip(axes[0], tasks):
        part = rows[(rows["data"] == data) & (rows["world"] == world) & (rows["task"] == task) & (rows["metric"] == metric)]
        part = part.sort_values("order")
        ax.plot(range(len(part)), part["value"], marker="o")
        ax.set_xticks(range(len(part)), part["checkpoint"], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}\n{metric} {'↑' if part['higher_is_better'].iloc[0] else '↓'}"
                     f"{'' if data == 'real' else ' (mini ' + world + ')'}", fontsize=9)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    return f"<figure class='checkpoint-plot'>{_svg(fig)}</figure>"


def published_section(frame: pd.DataFrame, published: Path | None) -> str:
    if published is None or not Path(published).is_file():
        return "<p class='note'>No published numbers file.</p>"
    table = beside_published(frame, load_published(published))
    if table.empty:
        return ("<p class='note'>No real-data cell has a published number (same backbone with official weights, task "
                "label and metric); mini-world cells never get one.</p>")
    shown = table[["backbone", "task", "metric", "ours", "published", "difference", "source"]].copy()
    for col in ("ours", "published", "difference"):
        shown[col] = shown[col].map(lambda v: f"{v:.4g}")
    return shown.to_html(index=False, classes="published", escape=True)


def provenance_section(sources: list[Path]) -> str:
    out = []
    for source in sources:
        if not Path(source).is_dir():
            out.append(f"<p class='note'>{html.escape(str(source))}: a CSV carries no provenance.</p>")
            continue
        for path, rec in iter_records(Path(source), skipped=[]):
            summary = (f"{html.escape(rec.backbone.get('label', '?'))} × {html.escape(rec.task.get('label', '?'))} — "
                       f"{rec.status}, {rec.finished_at}")
            keep = {k: getattr(rec, k) for k in ("run_id", "cell_key", "evalsuite_version", "git_sha", "git_dirty", "task",
                                                  "backbone", "data", "seed", "environment", "settings", "timings")}
            body = html.escape(json.dumps(keep, indent=1, default=str))
            out.append(f"<details class='provenance'><summary>{summary}</summary>"
                       f"<p class='note'>{html.escape(str(path))}</p><pre>{body}</pre></details>")
    return "".join(out) or "<p class='note'>No records.</p>"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # the same records give the same file
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML
