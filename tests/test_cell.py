"""Spine v3: a cell is one value (`CellSpec`), and every view keys cells by its identity."""

from __future__ import annotations

import json
import typing

import pytest
from typer.testing import CliRunner

from conftest import ok_record
from evalsuite.cell import CellError, CellSpec, DataSpec, RunSettings, read_cell_file, write_cell_file
from evalsuite.cli import app
from evalsuite.leaderboard import check, compare, load_samples, load_tidy, pivots
from evalsuite.params import ParamError
from evalsuite.records import RunRecord, write_record
from evalsuite.registry import TASKS


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


KNN = ["-b", "mae-tiny", "-t", "imagenet", "--protocol", "knn", "--data", "mini", "--weights", "random"]


@pytest.mark.slow
def test_two_knn_cells_differing_only_in_temperature_are_two_rows_everywhere(tmp_path):
    """The issue's probe: temperature 0.07 vs 0.5 are two experiments. The leaderboard shows two rows,
    compare two rows, and check matches each against its own baseline row (and sees one move)."""
    out = tmp_path / "runs"
    for temperature in ("0.07", "0.5"):
        assert cli("run", *KNN, "-p", f"temperature={temperature}", "--out", out).exit_code == 0
    frame = load_tidy(out)
    (table,) = pivots(frame).values()
    primary = [c for c in table.columns if c.startswith("imagenet/knn · ")]
    assert sorted(table[primary].dropna(how="all").index) == ["mae-tiny", "mae-tiny [temperature=0.5]"]
    shown = cli("leaderboard", out, "-f", "csv")
    assert shown.exit_code == 0 and "mae-tiny [temperature=0.5]" in shown.output

    rows = compare(frame, frame, load_samples(out), load_samples(out))
    assert sorted(rows[rows["metric"] == "top1_k100"]["task"]) == ["imagenet/knn", "imagenet/knn [temperature=0.5]"]

    baseline = tmp_path / "base.csv"
    assert cli("leaderboard", out, "--tidy-csv", baseline).exit_code == 0
    result = check(load_tidy(baseline), frame)
    assert result.ok and len(result.table) == 2 and set(result.table["status"]) == {"ok"}
    # the default cell alone against the baseline: its own row matches, the variant's row is missing
    default_only = frame[frame["variant"] == ""]
    partial = check(load_tidy(baseline), default_only)
    assert list(partial.missing["task"]) == ["imagenet/knn [temperature=0.5]"]
    assert list(partial.table[partial.table["status"] == "ok"]["task"]) == ["imagenet/knn"]


def _changed(value, kind):
    """Another valid value of a parameter (a score-affecting one, as every parameter is)."""
    if typing.get_origin(kind) is tuple:
        return None
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.25
    return None


@pytest.mark.parametrize("task", TASKS.names())
def test_cells_differing_in_one_parameter_never_merge_for_any_task(task, tmp_path):
    """For every task and protocol: a changed parameter makes a variant, and two records of the same
    label that differ in it are two leaderboard rows (never merged, never replaced)."""
    t = TASKS.get(task)
    for protocol in t.protocols:
        config = t.resolve(protocol=protocol, mini=True)
        types = {**config.params.types(), **{k: v for c in config.components.values() for k, v in c.types().items()}}
        changed = None
        for key, value in config.values().items():
            if key in config.protocol.components or key == "protocol":
                continue
            other = _changed(value, types[key])
            if other is None:
                continue
            try:
                variant = t.resolve({key: other}, protocol=protocol, mini=True)
            except ParamError:  # a constraint between fields: try the next one
                continue
            changed = (key, variant)
            break
        assert changed is not None, f"{task}/{protocol}: no parameter could be changed"
        key, variant = changed
        assert config.variant() == {}
        assert (key in variant.variant()) != (variant.label != config.label)  # named by the variant or by the label
        out = tmp_path / protocol
        for i, (cfg, value) in enumerate(((config, 1.0), (variant, 2.0))):
            record = ok_record(f"r{i}", cfg.label, "pixio-tiny", "m", value, variant=cfg.variant())
            write_record(record, out / f"r{i}.json")
        frame = load_tidy(out)
        (table,) = pivots(frame).values()
        assert table.notna().sum().sum() == 2, f"{task}/{protocol}: {key} merged"  # two cells: two rows or columns


def test_a_schema_2_record_still_reads_with_its_variant(tmp_path):
    """Records of the previous schema keep their place: the variant is recovered from their
    parameters (operational ones left out); a record whose parameters no longer resolve is refused
    with one line naming the file."""
    config = TASKS.get("imagenet").resolve({"temperature": 0.5}, protocol="knn", mini=True)
    record = json.loads(ok_record("r", config.label, "pixio-tiny", "m", 1.0).to_json())
    record["schema_version"] = 2
    record["task"] = {**record["task"], "protocol": "knn", "params": {**config.values(), "checkpoint_interval": 3},
                      "operational": ["checkpoint_interval"]}
    del record["task"]["variant"]
    (tmp_path / "old.json").write_text(json.dumps(record))
    loaded = RunRecord.load(tmp_path / "old.json")
    assert loaded.task["variant"] == {"temperature": 0.5} and loaded.schema_version == 3
    assert "checkpoint_interval" not in loaded.task["identity"]
    record["task"]["params"] = {"no_such_parameter": 1}
    (tmp_path / "old.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="old.json: a schema-2 record whose parameters no longer resolve"):
        RunRecord.load(tmp_path / "old.json")


def test_an_old_tidy_csv_without_variants_is_refused_in_one_line(tmp_path):
    (tmp_path / "old.csv").write_text("data,world,task,backbone,metric,value,higher_is_better,primary\n"
                                      "mini,seed0-small,imagenet/knn,m,top1,1.0,True,True\n")
    result = cli("check", tmp_path / "old.csv", "--baseline", tmp_path / "old.csv")
    assert result.exit_code == 2 and "was written before results carried their variant" in result.output


# ---------------------------------------------------------------------------------------
# CellSpec: one constructor, one validator, one JSON form
# ---------------------------------------------------------------------------------------
def test_params_are_typed_at_the_first_hop_and_the_json_form_round_trips(tmp_path):
    spec = CellSpec.build("mae-tiny", "imagenet", protocol="knn", params={"ks": "5,10", "temperature": "5e-2",
                                                                          "primary_k": "5"}, data="mini", seed=2)
    assert spec.params == {"ks": (5, 10), "temperature": 0.05, "primary_k": 5}
    assert type(spec.params["temperature"]) is float and type(spec.params["primary_k"]) is int
    settings = RunSettings(out=tmp_path / "runs", batch_size=8, checkpoint_interval=5)
    back, shipped = read_cell_file(write_cell_file(tmp_path / "cell.json", spec, settings))
    assert back == spec and shipped == settings
    with pytest.raises(ParamError, match="epochs='3.5' is not an integer"):
        CellSpec.build("mae-tiny", "imagenet", protocol="linear", params={"epochs": "3.5"})
    with pytest.raises(CellError, match="not a cell: unknown fields"):
        CellSpec.from_dict({**spec.to_dict(), "lr": 1})


@pytest.mark.parametrize("data", [dict(kind="mini", root="/x"), dict(kind="real", mini_seed=2), dict(kind="fake")])
def test_every_data_refusal_lives_in_the_data_spec(data):
    with pytest.raises(CellError):
        DataSpec(**data)


def test_data_root_with_mini_is_refused_with_one_line_under_every_executor(tmp_path):
    lines = set()
    for executor in ("local", "torchrun", "slurm"):
        extra = ["--cluster", "local", "--folder", tmp_path / "jobs"] if executor == "slurm" else []
        result = cli("sweep", "-b", "mae-tiny", "-t", "imagenet", "--data", "mini", "--data-root", tmp_path,
                     "--executor", executor, *extra, "--out", tmp_path / "runs")
        assert result.exit_code == 2, result.output
        lines.add(result.output.strip())
    (line,) = lines
    assert "--data mini and --data-root exclude each other" in line and "\n" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_sweep_cell_is_the_run_cell_and_run_cell_file_runs_it(tmp_path):
    """A local sweep's record has the identity of the same `run`; `run --cell FILE` (what the torchrun
    and Slurm executors ship) is that cell too, and a cell file excludes the cell flags."""
    given = ["-p", "ks=5,10", "-p", "primary_k=5"]
    assert cli("run", *KNN, *given, "--out", tmp_path / "run").exit_code == 0
    swept = cli("sweep", "-b", "mae-tiny", "-t", "imagenet", "--protocols", "knn", "--data", "mini", "-w", "random",
                *given, "--out", tmp_path / "sweep")
    assert swept.exit_code == 0, swept.output
    (run_path,), (sweep_path,) = ([p for p in (tmp_path / d).rglob("*.json") if ".cells" not in p.parts]
                                  for d in ("run", "sweep"))
    a, b = RunRecord.load(run_path), RunRecord.load(sweep_path)
    assert a.cell_key == b.cell_key and a.task["identity"] == b.task["identity"]
    assert a.task["variant"] == b.task["variant"] == {"ks": [5, 10], "primary_k": 5}
    spec = CellSpec.build("mae-tiny", "imagenet", protocol="knn", weights="random", data="mini",
                          params={"ks": "5,10", "primary_k": "5"})
    cell_file = write_cell_file(tmp_path / "cell.json", spec, RunSettings(out=tmp_path / "run"))
    again = cli("run", "--cell", cell_file)
    assert again.exit_code == 0 and "already done, skipped" in " ".join(again.output.split())
    both = cli("run", "--cell", cell_file, "-b", "mae-tiny")
    assert both.exit_code == 2 and "--cell names the whole cell: it excludes --backbone" in both.output


def test_objective_options_share_the_grammar_of_p():
    from evalsuite.pretrain import check_objective

    assert check_objective("mae-tiny", {"decoder_depth": "2"})["decoder_depth"] == 2
    with pytest.raises(ParamError, match="decoder_depth='1e3' is not an integer"):
        check_objective("mae-tiny", {"decoder_depth": "1e3"})


def test_show_says_where_each_value_came_from():
    def sources(*data):
        result = cli("show", "nyuv2", "--protocol", "pixio", "--head", "dpt", "-p", "epochs=5", *data, "--json")
        return json.loads(result.output)["sources"]

    real, mini = sources(), sources("--data", "mini")
    assert real["epochs"] == mini["epochs"] == real["head"] == "-p"
    assert real["lr"] == "head dpt preset" and mini["lr"] == "mini preset" and real["weight_decay"] == "field default"


# ---------------------------------------------------------------------------------------
# A CLI that answers at once
# ---------------------------------------------------------------------------------------
NO_TORCH = """
import sys
from typer.testing import CliRunner
from evalsuite.cli import app
for argv in (["run", "-b", "pixio-h61", "-t", "nyuv2"], ["run", "-b", "pixio-h16", "-t", "nyvu2"]):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "Did you mean" in result.output, result.output
assert "torch" not in sys.modules, "refusing a typo imported torch"
"""


def test_refusing_a_typo_imports_no_torch():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_registry_indexes_are_what_the_modules_register():
    """Names are listed from the committed indexes; they must equal what importing the modules
    registers (rewrite them with `python -m evalsuite.registry`)."""
    import subprocess
    import sys

    script = ("import json; from evalsuite.registry import BACKBONES, TASKS, HEADS, build_index; "
              "print(json.dumps({p: build_index(p, [BACKBONES, TASKS, HEADS]) for p in ('backbones', 'tasks')}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from importlib.resources import files

    for package, index in json.loads(done.stdout.strip().splitlines()[-1]).items():
        committed = json.loads(files(package).joinpath("registry-index.json").read_text())
        assert committed == index, f"{package}/registry-index.json is stale: run `python -m evalsuite.registry`"


# ---------------------------------------------------------------------------------------
# A family is its package: one defined outside the repository runs end to end
# ---------------------------------------------------------------------------------------
TOY_FAMILY = '''
"""A task family outside evalsuite: its task, protocol, metric, mini generator and CLI command."""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import typer

from evalsuite.contracts import Metric, Task, TaskOutput
from evalsuite.mini import register_mini
from evalsuite.params import Params, param


@register_mini("toyfam-mini", version=1, description="numbers in a JSON file")
def generate(out: Path, size, seed: int) -> None:
    (out / "numbers.json").write_text(json.dumps([seed + i for i in range(4)]))


def mean_metric(values) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class ToyParams(Params):
    scale: float = param(1.0, "multiplies every number", min=0)


def score(numbers: Path = typer.Argument(..., help="a JSON list of numbers")):
    """Print the family's metric of a file."""
    print(f"toy score {mean_metric(json.loads(numbers.read_text())):.2f}")


TASK = Task("toyfam", version=1, family="toy", dataset="toy", mini_dataset="toyfam-mini", tolerance=0.0,
            description="a family defined outside evalsuite", commands={"score": score})


@TASK.protocol("mean", ToyParams, primary_metric="mean", higher_is_better=True, selection_split="none",
               report_split="all", description="the scaled mean of the numbers plus the embedding's sign")
def run(backbone, config, ctx):
    numbers = json.loads((ctx.data_root / "numbers.json").read_text())
    with torch.inference_mode():
        embedding = backbone.global_embedding(torch.zeros(1, 3, *backbone.meta.image_size))
    scaled = [config.params.scale * n for n in numbers]
    assert torch.isfinite(embedding).all()
    return TaskOutput([Metric("mean", mean_metric(scaled), "all", True, primary=True)],
                      per_sample={"mean": scaled})
'''


@pytest.mark.slow
def test_a_family_outside_the_repository_runs_end_to_end(tmp_path):
    """Registered by entry point only, with a protocol, a metric, a mini generator and a CLI
    subcommand: `run`, `leaderboard` and `score toyfam` work, and no file of evalsuite/ names it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    site = tmp_path / "site"
    (site / "toyfam").mkdir(parents=True)
    (site / "toyfam" / "__init__.py").write_text(TOY_FAMILY)
    meta = site / "toyfam-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[evalsuite.tasks]\ntoyfam = toyfam:TASK\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "EVALSUITE_MINI_CACHE": str(tmp_path / "mini")}

    def evalsuite(*args):
        done = subprocess.run([sys.executable, "-m", "evalsuite", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = tmp_path / "runs"
    evalsuite("run", "-b", "pixio-tiny", "-t", "toyfam", "--data", "mini", "--weights", "random", "-p", "scale=2",
              "--out", out)
    board = evalsuite("leaderboard", out, "-f", "csv")
    assert "toyfam/mean · mean" in board and "pixio-tiny [scale=2.0]" in board and ",3.0" in board
    (tmp_path / "numbers.json").write_text("[1, 2, 6]")
    assert "toy score 3.00" in evalsuite("score", "toyfam", tmp_path / "numbers.json")
    spine = Path(__file__).resolve().parent.parent / "evalsuite"
    assert not [p for p in spine.rglob("*.py") if "toyfam" in p.read_text()]


def test_the_spine_has_no_import_cycle_and_names_no_family():
    """Every import in evalsuite/ (function-level ones included) forms an acyclic graph, and the
    spine imports no family module (backbones/, tasks/)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "evalsuite").rglob("*.py")}
    graph, upward = {}, []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                deps |= {c for c in [target, *(f"{target}.{a.name}" for a in node.names)] if c in modules and c != name}
                upward += [f"{name} imports {target}" for top in ("backbones", "tasks") if target.split(".")[0] == top]
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
                upward += [f"{name} imports {a.name}" for a in node.names if a.name.split(".")[0] in ("backbones", "tasks")]
        graph[name] = deps
    assert not upward, upward
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph[node]:
            assert state.get(dep) != 1, f"import cycle: {' → '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
