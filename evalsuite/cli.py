"""`evalsuite` command line. Heavy imports happen inside commands so `--help` stays instant."""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark visual backbones on published protocols.")
data_app = typer.Typer(no_args_is_help=True, help="The offline mini world.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="The frozen-feature cache.")
app.add_typer(cache_app, name="cache")


class TaskCommands(typer.core.TyperGroup):
    """``evalsuite <verb> TASK …``: each task's own command for ``verb``, from `Task.commands`
    (``evalsuite score vqa``): a family brings its commands without the CLI knowing its name."""

    verb = ""

    def list_commands(self, ctx) -> list[str]:
        from .registry import TASKS

        return [name for name in TASKS.names() if self.verb in TASKS.get(name).commands]

    def get_command(self, ctx, name: str):
        from .registry import TASKS

        if name not in TASKS or self.verb not in TASKS.get(name).commands:
            return None
        one = typer.Typer()
        one.command(name)(TASKS.get(name).commands[self.verb])
        return typer.main.get_command(one)


class ScoreCommands(TaskCommands):
    verb = "score"


score_app = typer.Typer(cls=ScoreCommands, no_args_is_help=True,
                        help="Score a result file with a task's official evaluator (`evalsuite score TASK --help`).")
app.add_typer(score_app, name="score")
console = Console()
err = Console(stderr=True)

def fail(message: str, code: int = 2) -> NoReturn:
    """One red line on stderr and the exit code (2: the input is wrong; 1: the work failed)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _progress():
    """A progress bar on a terminal, one line per step off one (logs); the current one while entered."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .features import LineProgress, reporting

    if not err.is_terminal:
        return reporting(LineProgress(err))
    return reporting(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              console=err, transient=True))


def _user_errors():
    """The exceptions that mean "your input is wrong" (one line, exit 2), not "the run failed".
    A checkpoint error can only be raised once its module is imported: looked up, not imported, so
    that refusing a typo imports no torch."""
    from .registry import UnknownNameError

    checkpoints = sys.modules.get(f"{__package__}.checkpoints")
    extra = (checkpoints.CheckpointError,) if checkpoints is not None else ()
    return (UnknownNameError, ValueError, FileNotFoundError, *extra)


def _run_one(spec, settings):
    from .runner import RunFailed, run_cell

    try:
        with _progress() as progress, _warnings_to_stderr(), _interruptible():
            return run_cell(spec, settings, progress=progress)
    except KeyboardInterrupt:
        fail("interrupted: no record was written; run the same command again to resume from the cell's work dir", code=130)
    except RunFailed as exc:
        fail(f"{exc} (record: {exc.path})", code=1)
    except _user_errors() as exc:
        fail(str(exc))


@contextmanager
def _interruptible():
    """SIGTERM (Slurm's preemption, `kill`) ends a run as Ctrl-C does: through the same cleanup
    (no partial record, the work dir kept), not by killing the process where it stands."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _warnings_to_stderr():
    """evalsuite's own warnings (an evicted cache entry, a discarded checkpoint) as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            from . import EvalsuiteWarning

            for text in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, EvalsuiteWarning)):
                err.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def _print_record(result) -> None:
    rec = result.record
    title = f"{rec.backbone['name']} × {rec.task['label']} ({rec.data['source']} data)"
    table = Table(title=title + ("  [dim]— already done, skipped (use --force)[/]" if result.skipped else ""))
    for col in ("metric", "split", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for m in rec.metrics:
        name = f"[bold]{m['name']}[/]" if m["primary"] else m["name"]
        value = f"{m['value']:.4g}" + (f" ± {m['std']:.2g}" if m.get("std") is not None else "")
        table.add_row(name, m["split"], value)
    print_table(table)
    if rec.selected:
        console.print(f"selected: {rec.selected}", highlight=False)
    console.print(f"record: {result.path}", highlight=False)


@app.command()
def run(
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Registered backbone name."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Registered task name."),
    weights: Optional[str] = typer.Option(None, help="PATH, hf-hub:REPO or 'random' (default: the official file)."),
    weights_label: Optional[str] = typer.Option(None, help="Name of the checkpoint in leaderboards (default: its sha256)."),
    data: str = typer.Option("real", help="'real' or 'mini' (generated offline data)."),
    data_root: Optional[Path] = typer.Option(None, help="The dataset folder (else config file / $EVALSUITE_DATA_ROOT)."),
    mini_size: str = typer.Option("small", help="Mini-world size: small|medium|large."),
    mini_seed: int = typer.Option(0, help="Mini-world generation seed (another seed = other scenes and images)."),
    protocol: Optional[str] = typer.Option(None, help="Task protocol (`evalsuite show TASK` lists them)."),
    head: Optional[str] = typer.Option(None, help="Head variant of dense tasks."),
    blocks: Optional[int] = typer.Option(None, help="Trainable last blocks of --protocol partial-ft."),
    label_fraction: Optional[float] = typer.Option(None, help="Train on this seeded per-class fraction of the labels."),
    seeds: Optional[int] = typer.Option(None, help="Repeat training with seeds SEED … SEED+N−1; records mean ± std."),
    param: List[str] = typer.Option([], "--param", "-p", help="Protocol parameter KEY=VALUE (repeatable)."),
    seed: int = typer.Option(0),
    cell: Optional[Path] = typer.Option(None, help="Run the cell of this JSON file (what sweep executors ship); "
                                                   "excludes the cell options above."),
    out: Path = typer.Option(Path("results/runs"), help="Folder of result records."),
    force: bool = typer.Option(False, help="Re-run a cell that already has a finished record."),
    batch_size: int = typer.Option(64, help="Feature-extraction batch size."),
    num_workers: int = typer.Option(0, help="Data-loading workers."),
    checkpoint_interval: int = typer.Option(0, help="Training iterations between work-dir checkpoints (0: at the end)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)."),
):
    """Evaluate one backbone on one task and write a result record."""
    from . import distributed
    from .cell import CellSpec, RunSettings, read_cell_file
    from .params import parse_assignments

    try:
        settings = RunSettings(out=out, force=force, device=device, batch_size=batch_size, num_workers=num_workers,
                               checkpoint_interval=checkpoint_interval)
        if cell is not None:
            given = [flag for flag, value in (("--backbone", backbone), ("--task", task), ("--weights", weights),
                                              ("--protocol", protocol), ("--head", head), ("-p", param or None))
                     if value is not None]
            if given:
                fail(f"--cell names the whole cell: it excludes {', '.join(given)}")
            spec, shipped = read_cell_file(cell)
            settings = shipped or settings
        else:
            if backbone is None or task is None:
                return fail("give --backbone and --task (or --cell FILE)")
            params: dict = parse_assignments(param)
            for key, value in (("head", head), ("blocks", blocks), ("label_fraction", label_fraction), ("seeds", seeds)):
                if value is not None:
                    params[key] = value
            spec = CellSpec.build(backbone, task, protocol=protocol, params=params, weights=weights,
                                  weights_label=weights_label, data=data, data_root=data_root, mini_size=mini_size,
                                  mini_seed=mini_seed, seed=seed, processes=distributed.world_size())
    except _user_errors() as exc:
        fail(str(exc))
    _print_record(_run_one(spec, settings))


@app.command()
def leaderboard(
    results: Path = typer.Argument(Path("results/runs"), help="Folder of records or a tidy CSV."),
    format: str = typer.Option("table", "--format", "-f", help="table|csv|md|html"),
    tidy_csv: Optional[Path] = typer.Option(None, help="Also write the tidy long CSV here."),
    published: bool = typer.Option(False, "--published", help="Real-data cells beside the published numbers "
                                                                "(ours, published, difference); table|csv|json."),
    published_csv: Optional[Path] = typer.Option(None, help="Published numbers to use (default: results/published.csv)."),
):
    """Pivot backbone × task of primary metrics; mini-world results in their own table."""
    from .leaderboard import failed_attempts, latest, pivots, render

    frame = _load_results(results)
    if published:
        return _print_published(frame, published_csv, format)
    for attempt in failed_attempts(results):
        newer = "a newer attempt" if attempt["good_record"] else "the only attempt"
        err.print(f"[yellow]warning:[/] {attempt['backbone']} × {attempt['task']}: {newer} failed at {attempt['finished_at']}"
                  f" ({attempt['error']}; record: {attempt['path']})", highlight=False, soft_wrap=True)
    if tidy_csv is not None:
        latest(frame).to_csv(tidy_csv, index=False)
    tables, stds = pivots(frame), pivots(frame, "std")
    if not tables:
        fail(f"no finished results in {results}", code=1)
    if format == "table":
        _print_pivots(tables, stds)
    elif format in ("csv", "md", "html"):
        sys.stdout.write(render(tables, format, stds) + "\n")
    else:
        fail(f"unknown format {format!r}: table|csv|md|html")


def _print_published(frame, path: Optional[Path], fmt: str) -> None:
    from .leaderboard import PUBLISHED, beside_published, format_cell, load_published

    try:
        table = beside_published(frame, load_published(path or PUBLISHED))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if table.empty:
        fail("no real-data cell has a published number (same backbone with official weights, task label and metric); "
              "mini-world cells never do", code=1)
    if _machine_output(table, fmt):
        return
    out = Table(title="Ours beside the published numbers (difference = ours − published)")
    for col in ("backbone", "task", "metric"):
        out.add_column(col, no_wrap=True)
    for col in ("ours", "published", "difference"):
        out.add_column(col, justify="right")
    out.add_column("source", overflow="fold")
    for _, r in table.iterrows():
        out.add_row(r["backbone"], r["task"], r["metric"], format_cell(r["ours"], r["std"], ".4g"), f"{r['published']:.4g}",
                    f"{r['difference']:+.3g}", r["source"])
    print_table(out)


def _load_results(source: Path):
    """A results folder or CSV as a tidy frame; every file that is not a readable record is named."""
    from .leaderboard import load_tidy

    try:
        frame = load_tidy(source)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for reason in frame.attrs.get("skipped", []):
        err.print(f"[yellow]warning:[/] skipped {reason}", highlight=False, soft_wrap=True)
    return frame


def _print_frame(frame, title: str, styles: dict | None = None) -> None:
    """A rich table of ``frame``; names never truncated (folded on a narrow terminal, full width off one)."""
    out = Table(title=title)
    for col in frame.columns:
        out.add_column(str(col), overflow="fold")
    styles = styles or {}
    for _, row in frame.iterrows():
        cells = []
        for col, v in row.items():
            text = "—" if isinstance(v, float) and v != v else f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(styles[col](v) if col in styles else text)
        out.add_row(*cells)
    print_table(out)


def print_table(table: Table) -> None:
    """A rich table for people on a terminal (stacked when too narrow), unwrapped and uncoloured off one."""
    needed = console.measure(table, options=console.options.update_width(100_000)).maximum  # unclamped
    if console.is_terminal:
        if needed > console.width:  # too narrow to show it unwrapped: stack the rows, never cut a number or name
            return _print_stacked(table)
        console.print(table)
    else:  # pipes and CI: as wide as the table needs, so no name is folded or cut
        # Console.print clamps `width` to the console's own, so print through a console that wide
        Console(file=console.file, width=max(console.width, needed), no_color=True).print(table, crop=False)


def _print_stacked(table: Table) -> None:
    """A table too wide for the terminal as one block per row (``column: value`` lines): rich would
    otherwise break words and cut numbers ("0.08…") to fit 80 columns."""
    from rich.text import Text

    if table.title:
        console.print(table.title, style="bold", highlight=False)
    columns = [(str(c.header), list(c.cells)) for c in table.columns]
    for row in range(table.row_count):
        console.print(Text("─" * min(console.width, 40), style="dim"))
        for header, cells in columns:
            value = cells[row]
            text = Text.from_markup(value) if isinstance(value, str) else value
            console.print(Text.assemble((f"{header}: ", "bold"), text), highlight=False)  # type: ignore[arg-type]  # wrapped between words at the terminal's width


def _machine_output(frame, fmt: str) -> bool:
    """``csv``/``json`` to stdout for scripts (True), ``table`` for people (False)."""
    if fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
    elif fmt != "table":
        fail(f"unknown format {fmt!r}: table|csv|json")
    return fmt != "table"


def _print_pivots(tables, stds=None) -> None:
    from .leaderboard import format_cell, table_title

    for key, table in tables.items():
        spread = (stds or {}).get(key)
        tasks = dict.fromkeys(col.split(" · ")[0] for col in table.columns)
        for task in tasks:  # one table per task: a row of every task's metrics fits no screen
            columns = [col for col in table.columns if col.split(" · ")[0] == task]
            rows = table[columns].dropna(how="all")
            out = Table(title=f"{table_title(key)}\n{task}")
            out.add_column("backbone", no_wrap=True)  # never truncated: 'pixio-tiny' vs 'pixio-tiny@ckpt'
            for col in columns:
                out.add_column(col.split(" · ", 1)[1], justify="right")
            for name, row in rows.iterrows():
                out.add_row(name, *(format_cell(v, None if spread is None else spread.at[name, col], ".4g")
                                    for col, v in row.items()))
            print_table(out)


@app.command()
def compare(a: Path = typer.Argument(..., help="Results A (folder or CSV)."),
            b: Path = typer.Argument(..., help="Results B (folder or CSV)."),
            format: str = typer.Option("table", "--format", "-f", help="table|csv|json"),
            task_a: Optional[str] = typer.Option(None, help="Only this task label of A (needs --task-b): e.g. a control."),
            task_b: Optional[str] = typer.Option(None, help="Only this task label of B, paired with --task-a.")):
    """Per-task, per-metric deltas B − A; the better side follows each metric's direction.

    Where both sides are record folders with per-sample scores on the same data, ci95_low/ci95_high
    bound the delta: a paired bootstrap over the test samples. --task-a/--task-b pair two labels of
    one task, e.g. `vqa/adapter/scratch/shuffled` (the control) against `vqa/adapter/scratch/paired`."""
    from .leaderboard import as_task, load_samples
    from .leaderboard import compare as compare_frames

    if (task_a is None) != (task_b is None):
        fail("give both --task-a and --task-b (the two task labels to pair), or neither")
    frame_a, frame_b = _load_results(a), _load_results(b)
    try:
        samples_a, samples_b = load_samples(a, frame_a), load_samples(b, frame_b)
        if task_a is not None and task_b is not None:
            label = f"{task_a} → {task_b}"
            frame_a, samples_a = as_task(frame_a, samples_a, task_a, label)
            frame_b, samples_b = as_task(frame_b, samples_b, task_b, label)
        table = compare_frames(frame_a, frame_b, samples_a, samples_b)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if _machine_output(table, format):
        return
    marks = {"a": "[red]A[/]", "b": "[green]B[/]", "=": "=", "?": "?"}
    shown = table.drop(columns=["ci95_low", "ci95_high"]).rename(columns={"interval": "95 % interval of the delta"})
    _print_frame(shown, f"A = {a}   B = {b}", {"better": lambda v: marks[v]})


@app.command()
def report(
    results: List[Path] = typer.Argument(..., help="Folders of records (or tidy CSVs) to report on."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    published_csv: Optional[Path] = typer.Option(None, help="Published numbers (default: results/published.csv)."),
):
    """One self-contained HTML report (opens offline): leaderboards, per-task plots with intervals,
    checkpoints over training, published numbers, and each record's provenance."""
    from .fileio import atomic_write_text
    from .leaderboard import PUBLISHED
    from .report import build

    for source in results:
        if not source.exists():
            fail(f"{source} does not exist")
    try:
        page = build(results, published_csv or PUBLISHED)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    atomic_write_text(out, page)
    console.print(f"wrote {out} ({len(page) / 1024:.0f} KiB)", highlight=False)


@app.command()
def bench(
    backbone: str = typer.Option(..., "--backbone", "-b", help="A registered backbone or timm:<model>."),
    batch_size: int = typer.Option(32),
    image_size: Optional[int] = typer.Option(None, help="Square input side (default: the backbone's)."),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (autocast)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile both models first."),
    channels_last: bool = typer.Option(False, "--channels-last"),
    device: Optional[str] = typer.Option(None),
    warmup: int = typer.Option(5),
    steps: int = typer.Option(20),
    peak_tflops: Optional[float] = typer.Option(None, help="The device's peak, for MFU where it is not known."),
    out: Optional[Path] = typer.Option(None, help="Folder to write the record into (leaderboard-readable)."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
):
    """Forward-pass throughput (timm benchmark.py conventions) through our feature path and a bare timm
    loop on the same architecture, with their ratio; images/s, ms/step, peak memory, TFLOP/s, MFU."""
    import json

    from .bench import as_record, ratio
    from .bench import bench as run_bench
    from .environment import parse_device
    from .records import write_record

    try:
        results, settings = run_bench(backbone, batch_size=batch_size, image_size=image_size, precision=precision,
                                      compile=compile, channels_last=channels_last,
                                      device=parse_device(device) if device else None, warmup=warmup, steps=steps,
                                      peak_tflops=peak_tflops)
    except _user_errors() as exc:
        fail(str(exc))
    record = as_record(backbone, results, settings)
    if out is not None:
        write_record(record, out / backbone.replace(":", "_") / f"{record.run_id}.json")
    if json_output:
        sys.stdout.write(json.dumps({"settings": settings, "results": record.selected["paths"],
                                     "ratio_to_timm": ratio(results)}, indent=1) + "\n")
        return
    table = Table(title=f"{backbone}: batch {settings['batch_size']}, {settings['image_size']} px, {precision}, "
                        f"{settings['device']}, {settings['threads']} threads")
    for col in ("path", "model", "images/s", "ms/step", "peak MB", "GFLOP/img", "TFLOP/s", "MFU"):
        table.add_column(col, justify="left" if col in ("path", "model") else "right", no_wrap=True)
    for r in results:
        mfu = "n/a (peak unknown: --peak-tflops)" if r.mfu is None else f"{100 * r.mfu:.1f} %"
        table.add_row(r.path, r.model, f"{r.images_per_s:.1f}", f"{r.ms_per_step:.1f}", f"{r.peak_memory_mb:.0f}",
                      f"{r.gflops_per_image:.2f}", f"{r.achieved_tflops:.3f}", mfu)
    print_table(table)
    value = ratio(results)
    console.print("ours ÷ bare timm: " + (f"{value:.3f}" if value is not None else
                                          f"n/a (timm has no {backbone} architecture)"), highlight=False)


@app.command()
def check(
    results: Path = typer.Argument(Path("results/runs"), help="Folder of records or a tidy CSV."),
    baseline: Path = typer.Option(..., help="Baseline: a tidy CSV (evalsuite leaderboard --tidy-csv) or a folder of records."),
    tolerance: Optional[float] = typer.Option(None, help="Override every task's tolerance."),
    format: str = typer.Option("table", "--format", "-f", help="table|csv|json|md (md: a summary for a PR or "
                                                              "$GITHUB_STEP_SUMMARY)"),
):
    """Exit 1 if a primary metric regressed beyond tolerance or a baseline cell is missing."""
    from .leaderboard import check as check_frames

    try:
        result = check_frames(_load_results(baseline), _load_results(results), tolerance)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if format == "md":
        sys.stdout.write(result.markdown(f"evalsuite check against {baseline.name}") + "\n")
        if not result.ok:
            raise typer.Exit(1)
        return
    if not _machine_output(result.table, format):
        style = {"ok": "green", "improved": "bold green", "regressed": "bold red", "missing": "bold yellow"}
        _print_frame(result.table, f"check against {baseline}", {"status": lambda v: f"[{style[v]}]{v}[/]"})
    if not result.ok:
        for line in result.moved_environments():
            err.print(line, highlight=False, soft_wrap=True)
        err.print(f"[bold red]FAILED[/]: {len(result.regressions)} regressed, {len(result.missing)} missing")
        raise typer.Exit(1)
    console.print("[green]OK[/]: no primary metric moved beyond tolerance")


LISTS = ("backbones", "tasks", "heads", "text-encoders", "mini")


@app.command("list")
def list_(what: str = typer.Argument(..., help="One of: " + ", ".join(LISTS))):
    """List registered backbones, tasks (with their protocols), heads, text encoders or mini datasets."""
    from .registry import HEADS, MINI_DATASETS, TEXT_ENCODERS

    if what == "backbones":
        _list_backbones()
    elif what == "tasks":
        _list_tasks()
    elif what in ("heads", "text-encoders", "mini"):
        registry = {"heads": HEADS, "text-encoders": TEXT_ENCODERS, "mini": MINI_DATASETS}[what]
        for name in registry.names():
            entry = registry.get(name)
            version = f"  v{entry.version}" if hasattr(entry, "version") else ""
            console.print(f"{name}{version}  {entry.description}", highlight=False, soft_wrap=True)
    else:
        from .params import suggest

        fail(f"unknown list {what!r}.{suggest(what, list(LISTS))} One of: {', '.join(LISTS)}")


def _list_backbones() -> None:
    from .checkpoints import BackboneSpec, resolve_weights
    from .registry import BACKBONES

    table = Table(title="backbones")
    for col in ("name", "family", "params", "patch", "width", "depth", "CLS", "dense layers", "weights"):
        table.add_column(col, justify="right" if col in ("params", "patch", "width", "depth", "CLS") else "left")
    import torch

    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        if not isinstance(spec, BackboneSpec):
            table.add_row(name, "plugin", *[""] * 7)
            continue
        with torch.device("meta"):
            meta = spec.build().meta
        try:
            path = resolve_weights(spec, None)
            weights = "random" if path is None else "found"
        except Exception:
            weights = f"[dim]missing ({spec.weights_file})[/]"
        table.add_row(name, spec.family, f"{meta.num_params / 1e6:.2f}M", str(meta.patch_size), str(meta.embed_dim),
                      str(meta.depth), str(meta.num_cls_tokens), ",".join(map(str, meta.default_layers)), weights)
    print_table(table)
    console.print("and timm:<model> for any timm model with forward_intermediates (e.g. timm:convnext_tiny)", highlight=False)


def _list_tasks() -> None:
    from .registry import TASKS

    table = Table(title="tasks")
    for col in ("task", "version", "protocol", "primary", "selection / report", "dataset", "mini"):
        table.add_column(col, overflow="fold")
    for name in TASKS.names():
        task = TASKS.get(name)
        for i, proto in enumerate(task.protocols.values()):
            table.add_row(name if i == 0 else "", str(task.version) if i == 0 else "", proto.name,
                          f"{proto.primary_metric} {'↑' if proto.higher_is_better else '↓'}",
                          f"{proto.selection_split} / {proto.report_split}", task.dataset if i == 0 else "",
                          (task.mini_dataset or "—") if i == 0 else "")
    print_table(table)


@app.command()
def show(
    task: str = typer.Argument(..., help="A registered task."),
    protocol: Optional[str] = typer.Option(None, help="The protocol (default: the task's first)."),
    param: List[str] = typer.Option([], "--param", "-p", help="Protocol parameter KEY=VALUE (repeatable)."),
    head: Optional[str] = typer.Option(None, help="Head of dense protocols."),
    data: str = typer.Option("real", help="'real' or 'mini' (mini-world defaults)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Resolve the blocks read and the transform."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved protocol as JSON."),
):
    """Print a fully resolved protocol: every parameter that would run (defaults, protocol presets,
    mini-world values and your -p), what is read from the backbone and how images are transformed."""
    import json

    from .params import ParamError, parse_assignments
    from .registry import TASKS

    try:
        overrides = parse_assignments(param) | ({"head": head} if head else {})
        cfg = TASKS.get(task).resolve(overrides, protocol=protocol, mini=data == "mini")
        model = None
        if backbone is not None:
            from .checkpoints import BackboneSpec
            from .registry import BACKBONES

            spec = BACKBONES.get(backbone)
            if isinstance(spec, BackboneSpec):
                import torch

                with torch.device("meta"):
                    model = spec.build()
    except (ParamError, *_user_errors()) as exc:
        fail(str(exc))
    reads = _resolved_reads(cfg, model)
    if as_json:
        sources = {key: cfg.source(key) for key in cfg.values()}
        sys.stdout.write(json.dumps({"task": cfg.record(), "identity": cfg.identity(), "sources": sources, **reads}, indent=1,
                                    default=str) + "\n")
        return
    proto = cfg.protocol
    console.print(f"[bold]{cfg.label}[/] (v{cfg.version}) — {proto.description}", highlight=False, soft_wrap=True)
    console.print(f"primary metric: {proto.primary_metric} {'↑' if proto.higher_is_better else '↓'} · selection: "
                  f"{proto.selection_split} · report: {proto.report_split}" + (" · mini-world values" if cfg.mini else ""),
                  highlight=False, soft_wrap=True)
    table = Table(title="parameters")
    for col in ("owner", "name", "value", "from", "default", "range", "help"):
        table.add_column(col, overflow="fold")
    owners = [(proto.name, cfg.params)] + [(f"{k} {cfg.params.to_dict().get(k, '')}", p) for k, p in cfg.components.items()]
    for owner, params in owners:
        for row in params.describe():
            value = getattr(params, row["name"])
            changed = value != row["default"]
            table.add_row(owner, row["name"], f"[bold]{value}[/]" if changed else str(value), cfg.source(row["name"]),
                          str(row["default"]), row["range"], row["help"])
    print_table(table)
    for key, value in reads.items():
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)


def _resolved_reads(cfg, model) -> dict:
    """What a protocol reads, concretely for ``model`` when given (blocks, norm, CLS, transform)."""
    out = {}
    head = cfg.components.get("head")
    if head is not None and hasattr(head, "layer_indices"):
        blocks = head.layer_indices(model) if model is not None else head.layers
        out["reads"] = f"blocks {blocks}, final norm {'on' if head.norm else 'off'}, CLS {head.cls}"
    if model is not None:
        out["transform"] = model.meta.preprocess_for(cfg.protocol.name).describe()
    return out


@app.command()
def quickstart(
    out: Path = typer.Option(Path("results/quickstart"), help="Folder of result records."),
    force: bool = typer.Option(False, help="Re-run cells that already have records."),
    mini_seed: int = typer.Option(0, help="Replay the whole job on the mini world of this seed (pretraining data included)."),
):
    """The main job on the mini world: brief pretraining of tiny Pixio, then every task with mini data
    on it and on its random twin, the leaderboard, and what pretraining bought (deltas with intervals)."""
    from . import quickstart as job
    from .leaderboard import load_samples, load_tidy, pivots
    from .runner import RunFailed

    with _progress() as progress:
        try:
            skip = lambda task, reason: progress.console.print(f"[yellow]skipped {task}:[/] {reason}", highlight=False)
            for result in job.run(out, force=force, progress=progress, mini_seed=mini_seed, skipped=skip):
                rec = result.record
                value = next(m["value"] for m in rec.metrics if m["primary"])
                state = "cached" if result.skipped else f"{rec.timings['total_s']:.1f}s"
                progress.console.print(f"{rec.backbone['label']:>28} × {rec.task['label']:<18} {value:8.3f}  ({state})",
                                       highlight=False)
        except RunFailed as exc:
            fail(f"{exc} (record: {exc.path})", code=1)
    frame = load_tidy(out)
    _print_pivots(pivots(frame), pivots(frame, "std"))
    deltas = job.twin_deltas(frame, load_samples(out, frame))
    colour = {"pretrained better": "green", "pretrained worse": "red"}
    table = Table(title="What mini pretraining bought: pretrained − random twin, paired bootstrap 95 % interval")
    for col in ("backbone", "task", "metric"):
        table.add_column(col, no_wrap=True)
    for col in ("random", "pretrained", "delta", "95 % interval"):
        table.add_column(col, justify="right")
    table.add_column("verdict", no_wrap=True)
    for _, row in deltas.iterrows():
        interval = "—" if row["verdict"] == "no interval" else f"[{row['ci95_low']:.4g}, {row['ci95_high']:.4g}]"
        verdict = f"[{colour[row['verdict']]}]{row['verdict']}[/]" if row["verdict"] in colour else row["verdict"]
        table.add_row(row["backbone"], row["task"], row["metric"], f"{row['random']:.4g}", f"{row['pretrained']:.4g}",
                      f"{row['delta']:+.4g}", interval, verdict)
    print_table(table)


@app.command()
def pretrain(
    backbone: str = typer.Option(..., "--backbone", "-b", help="Backbone whose family objective to train."),
    data: str = typer.Option("mini", help="'mini' or a folder of images."),
    mini_seed: int = typer.Option(0, help="With --data mini: the seed of the generated world."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (or use --epochs)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs over the (curated) data."),
    batch_size: int = typer.Option(64, help="Global batch size over all processes."),
    blr: float = typer.Option(1.5e-4, help="Base learning rate; lr = blr · batch / 256."),
    out: Path = typer.Option(Path("results/pretrain"), help="Checkpoint folder (checkpoint.pth, log.jsonl)."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pth."),
    scores: Optional[Path] = typer.Option(None, help="Curation scores from `evalsuite curate`."),
    weights: Optional[str] = typer.Option(None, help="Start the encoder from these weights."),
    drop_path: float = typer.Option(0.0, help="Stochastic depth rate of the last block."),
    objective: List[str] = typer.Option([], "--objective", "-o",
                                        help="Objective option KEY=VALUE (repeatable), e.g. decoder_depth=8, ibot=true."),
    image_size: Optional[int] = typer.Option(None, help="Pretraining resolution (default: the backbone's)."),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(0, help="Checkpoint every N steps (0: at the end)."),
    num_workers: int = typer.Option(0),
):
    """Pretrain with the backbone family's own objective; runs under torchrun (DDP) as is."""
    from .pretrain import PretrainConfig
    from .pretrain import pretrain as run_pretrain

    if steps is None and epochs is None:
        fail("give --steps N or --epochs N")
    if (out / "checkpoint.pth").is_file() and not resume:
        fail(f"{out / 'checkpoint.pth'} exists: pass --resume to continue it, or another --out")
    from .params import parse_assignments
    from .pretrain import check_objective

    try:
        options = check_objective(backbone, parse_assignments(objective, "--objective"))
    except _user_errors() as exc:
        fail(str(exc))
    cfg = PretrainConfig(backbone=backbone, data=data, mini_seed=mini_seed, out=str(out), steps=steps, epochs=epochs, batch_size=batch_size,
                         blr=blr, drop_path=drop_path, seed=seed, scores=str(scores) if scores else None, weights=weights,
                         objective=options, num_workers=num_workers, save_every=save_every, image_size=image_size)
    try:
        with _progress() as progress:
            path = run_pretrain(cfg, progress)
    except _user_errors() as exc:
        fail(str(exc))
    console.print(f"checkpoint: {path}  (evaluate with --weights {path})", highlight=False)


@app.command()
def sweep(
    backbones: List[str] = typer.Option(..., "--backbones", "-b", help="Backbones (repeat, or comma-separated)."),
    tasks: List[str] = typer.Option(..., "--tasks", "-t", help="Tasks (repeat, or comma-separated)."),
    protocols: List[str] = typer.Option([], "--protocols", help="Protocols, applied to the tasks that have them."),
    seeds: int = typer.Option(1, help="Seeds per cell (0..N−1 from --first-seed)."),
    first_seed: int = typer.Option(0),
    weights: List[str] = typer.Option([], "--weights", "-w", help="Checkpoints (repeat): each backbone × each weights."),
    executor: str = typer.Option("local", help="local | torchrun | slurm"),
    processes: int = typer.Option(2, help="torchrun: processes per cell."),
    data: str = typer.Option("real", help="'real' or 'mini'."),
    data_root: Optional[str] = typer.Option(None),
    mini_size: str = typer.Option("small"),
    mini_seed: int = typer.Option(0),
    param: List[str] = typer.Option([], "--param", "-p", help="KEY=VALUE for every cell."),
    out: Path = typer.Option(Path("results/runs"), help="Folder of records (shared by concurrent sweeps safely)."),
    batch_size: int = typer.Option(64),
    device: Optional[str] = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells, their state and estimated cost; run nothing."),
    format: str = typer.Option("table", "--format", "-f", help="--dry-run output: table|csv|json"),
    partition: Optional[str] = typer.Option(None, help="slurm: partition."),
    gpus_per_node: int = typer.Option(0, help="slurm: GPUs per job (one task per GPU)."),
    timeout_min: int = typer.Option(24 * 60, help="slurm: time limit per job."),
    account: Optional[str] = typer.Option(None, help="slurm: account."),
    cluster: str = typer.Option("slurm", help="slurm: 'slurm', or 'local' to run the jobs here through submitit."),
    folder: Path = typer.Option(Path("results/slurm"), help="slurm: job logs."),
):
    """Backbones × tasks × protocols × seeds × weights, one cell at a time: finished cells are skipped,
    failed and killed ones run again, a failing cell never stops the sweep (exit 1 at the end)."""
    from .cell import DataSpec, RunSettings
    from .params import parse_assignments
    from .sweep import dry_run_rows, plan, run_sweep

    split = lambda items: [x for item in items for x in item.split(",") if x]
    try:
        from .sweep import EXECUTORS

        if executor not in EXECUTORS:
            raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        # one data spec and one set of settings for every cell, refused here the same under every executor
        data_spec = DataSpec(data, data_root, mini_size, mini_seed)
        settings = RunSettings(out=out, device=device, batch_size=batch_size)
        cell_processes = {"torchrun": processes, "slurm": max(1, gpus_per_node)}.get(executor, 1)
        cells = plan(split(backbones), split(tasks), split(protocols), seeds, split(weights), first_seed, data=data_spec,
                     params=parse_assignments(param), processes=cell_processes)
        if executor == "slurm" and not dry_run:
            from .slurm import SlurmOptions, slurm_available

            if cluster == "slurm" and not slurm_available():
                fail("--executor slurm needs sbatch on this machine (a Slurm login node); --cluster local runs the jobs here")
            slurm_args = (SlurmOptions(partition=partition, gpus_per_node=gpus_per_node, timeout_min=timeout_min,
                                       account=account, job_name="evalsuite-sweep"), folder, cluster)
        else:
            slurm_args = None
        if dry_run:
            import pandas as pd

            rows = pd.DataFrame(dry_run_rows(cells, settings))
            if not _machine_output(rows, format):
                _print_frame(rows.drop(columns="cell_json"), f"sweep of {len(rows)} cells (dry run) → {out}")
                known = rows["estimated_s"].dropna()
                blocked = rows[rows["state"].str.startswith("cannot run")]
                todo = rows[(rows["state"] != "done") & ~rows.index.isin(blocked.index)]
                console.print(f"{len(todo)} to run; estimated {todo['estimated_s'].sum():.0f} s for the "
                              f"{todo['estimated_s'].notna().sum()} with a known cost ({len(known)} known in all)"
                              + (f"; {len(blocked)} cannot run (see their state) and are not counted" if len(blocked) else ""),
                              highlight=False)
            if len(rows) and (rows["state"].str.startswith("cannot run")).any():
                raise typer.Exit(1)  # a plan that cannot run as a whole is not a success, for scripts either
            return
    except _user_errors() as exc:
        fail(str(exc))
    marks = {"done": "[dim]skipped (done)[/]", "ok": "[green]ok[/]", "failed": "[bold red]failed[/]"}

    def report(outcome) -> None:
        value = "" if outcome.value is None else f"{outcome.value:.4g}"
        tail = f"  {outcome.error}" if outcome.error else ""
        console.print(f"{marks[outcome.status]}  {outcome.cell.name}  {value}  ({outcome.seconds:.1f}s){tail}", highlight=False,
                      soft_wrap=True)

    with _warnings_to_stderr():
        summary = run_sweep(cells, settings, executor, slurm_args, report)
    from .leaderboard import load_tidy, pivots

    frame = load_tidy(out)
    if not frame.empty:
        _print_pivots(pivots(frame), pivots(frame, "std"))
    if summary.failed:
        err.print(f"[bold red]{len(summary.failed)} of {len(cells)} cells failed:[/]", highlight=False)
        for outcome in summary.failed:
            err.print(f"  {outcome.cell.name}: {outcome.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def slurm(
    ctx: typer.Context,
    partition: Optional[str] = typer.Option(None, help="Slurm partition."),
    nodes: int = typer.Option(1, help="Nodes."),
    gpus_per_node: int = typer.Option(0, help="GPUs per node; one task (process) per GPU."),
    tasks_per_node: Optional[int] = typer.Option(None, help="Processes per node (default: one per GPU, else 1)."),
    cpus_per_task: int = typer.Option(10, help="CPU cores per process."),
    mem_gb: Optional[int] = typer.Option(None, help="Memory per node in GB (default: the partition's)."),
    timeout_min: int = typer.Option(24 * 60, help="Time limit in minutes; a job that reaches it is requeued."),
    account: Optional[str] = typer.Option(None, help="Slurm account."),
    qos: Optional[str] = typer.Option(None, help="Slurm QOS."),
    constraint: Optional[str] = typer.Option(None, help="Slurm constraint, e.g. volta32gb."),
    job_name: str = typer.Option("evalsuite", help="Slurm job name."),
    folder: Path = typer.Option(Path("results/slurm"), help="Job logs and submitit files (FOLDER/<job id>/)."),
    cluster: str = typer.Option("slurm", help="slurm, or local to run the same job on this machine."),
    wait: bool = typer.Option(False, help="Wait for the job and exit with its status."),
):
    """Submit an evalsuite command to Slurm: `evalsuite slurm [OPTIONS] -- run -b mae-b16 -t imagenet`.

    Each task gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so
    DDP commands run unchanged; a preempted or timed-out job is requeued and resumes."""
    from .slurm import SlurmOptions, submit

    options = SlurmOptions(partition=partition, nodes=nodes, gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node,
                           cpus_per_task=cpus_per_task, mem_gb=mem_gb, timeout_min=timeout_min, account=account, qos=qos,
                           constraint=constraint, job_name=job_name)
    try:
        job = submit(list(ctx.args), options, folder, cluster)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"submitted job {job.job_id}: evalsuite {' '.join(ctx.args)}  (logs: {job.paths.stdout})", highlight=False)
    if wait:
        try:
            job.results()  # one per task
        except Exception as exc:  # submitit re-raises the task's failure with its log tail
            fail(f"job {job.job_id} failed: {exc}", code=1)
        console.print(f"job {job.job_id} finished", highlight=False)


@app.command()
def curate(
    data: Path = typer.Argument(..., help="Folder of images to score."),
    scorer: Path = typer.Option(..., help="A pretraining checkpoint of an MAE-style objective."),
    out: Path = typer.Option(Path("curation_scores.json")),
    min_side: int = typer.Option(320, help="Images with a shorter side score 0."),
    min_entropy: float = typer.Option(4.5, help="Images with colour-histogram entropy (bits) at or below score 0."),
):
    """Score images for Pixio's soft self-curation (keep probability = score)."""
    from .curate import curate as run_curate
    from .curate import write_scores

    try:
        result = run_curate(scorer, data, min_side=min_side, min_entropy=min_entropy)
    except _user_errors() as exc:
        fail(str(exc))
    write_scores(result, out)
    console.print(f"{len(result['scores'])} images scored, expected kept fraction "
                  f"{result['kept_fraction_expected']:.3f}: {out}", highlight=False)


@cache_app.command("ls")
def cache_ls():
    """List cached feature sets (key, backbone, reducer, split, size)."""
    from .cache import cache_root, entries

    table = Table(title=f"feature cache: {cache_root()}")
    for col in ("key", "backbone", "weights", "reducer", "split", "n", "MB"):
        table.add_column(col)
    for e in entries():
        table.add_row(e["key"][:12], e["backbone"], e["weights"][:12], e["reducer"], e["split"], str(e["n"]),
                      f"{e['bytes'] / 2**20:.1f}")
    print_table(table)


@cache_app.command("rm")
def cache_rm(match: Optional[str] = typer.Argument(None, help="A key prefix or a backbone name."),
             all_: bool = typer.Option(False, "--all", help="Delete every cached feature set.")):
    """Delete cached feature sets: those matching a key prefix or backbone, or --all."""
    from .cache import remove

    if all_ == (match is not None):
        fail("give a key prefix or backbone name, or --all (not both)")
    try:
        console.print(f"removed {remove(None if all_ else match)} feature set(s)")
    except ValueError as exc:
        fail(str(exc))


@data_app.command("make-mini")
def make_mini(
    names: List[str] = typer.Argument(None, help="Mini datasets to generate (default: all)."),
    size: str = typer.Option("small", help="small|medium|large"),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, help="Regenerate even if cached."),
):
    """Generate (or find cached) mini datasets and print where they are."""
    import json

    from .data import MANIFEST
    from .mini import ensure_mini
    from .registry import MINI_DATASETS, UnknownNameError

    for name in names or MINI_DATASETS.names():
        try:
            path = ensure_mini(name, size, seed, force=force)  # type: ignore[arg-type]
        except (UnknownNameError, ValueError) as exc:
            fail(str(exc))
        manifest = json.loads((path / MANIFEST).read_text())
        console.print(f"{name}: {path}  ({len(manifest['files'])} files, sha256 {manifest['sha256'][:12]})", highlight=False)


if __name__ == "__main__":
    app()
