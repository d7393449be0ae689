"""fedjax_gen/cli.py: one public builder renders option dataclasses as flags for every entry point
(methods, attack, audit, evaluate, compare); bad values are one line naming the flag and exit 2;
the comparison calls the attack runner and scoring as functions; no import cycle through cli."""

import ast
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import typing

import pytest

from fedjax_gen import cli
from fedjax_gen.config import DataConfig, option, validated
from fedjax_gen.errors import InvalidValue, UserError

PACKAGE = pathlib.Path(cli.__file__).resolve().parent


@validated
class Toy:
    mode: str = option("a", "which mode", choices=("a", "b"))
    n: int = option(3, "a count", min=1)
    rate: typing.Optional[float] = option(None, "an optional rate", gt=0.0)
    verbose: bool = option(False, "say more")
    progress: bool = option(True, "progress lines", negate="--no-progress")
    eval_mode: str = option("full", "scoring", flag="--eval")


@validated
class Other:
    n: int = option(3, "a count", min=1)  # declared as Toy's: one flag sets both
    where: typing.Optional[str] = option(None, "a directory", positional=True, metavar="DIR")


def _help(parser) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    return " ".join(out.getvalue().split())  # argparse wraps lines at the terminal width


def test_builder_renders_each_field_as_a_flag_with_its_default_help_and_choices():
    text = _help(cli.build_parser(Toy, description="toy"))
    for f in dataclasses.fields(Toy):
        assert cli.flags(Toy)[f.name] in text and f.metadata["help"] in text
    assert "which mode [a | b] (default: a)" in text and "a count (default: 3)" in text
    assert "an optional rate" in text and "an optional rate (default" not in text  # None is not shown
    assert "--no-progress turn off: progress lines" in text and "--eval EVAL_MODE" in text
    assert cli.flags(Toy) == {"mode": "--mode", "n": "--n", "rate": "--rate", "verbose": "--verbose",
                              "progress": "--no-progress", "eval_mode": "--eval"}


def test_parse_returns_the_instances_typed_flags_win_over_defaults():
    assert cli.parse([Toy], []) == [Toy()]
    assert cli.parse([Toy], ["--mode", "b", "--n", "5", "--rate", "0.5", "--verbose", "--no-progress",
                             "--eval", "quick"]) == [Toy("b", 5, 0.5, True, False, "quick")]
    assert cli.parse([Toy], [], defaults={"n": 7}) == [Toy(n=7)]  # e.g. a method's run_defaults
    assert cli.parse([Toy], ["--n", "2"], defaults={"n": 7}) == [Toy(n=2)]
    assert "a count (default: 7)" in _help(cli.build_parser(Toy, defaults={"n": 7}))


def test_a_shared_field_is_one_flag_setting_both_classes_and_a_positional_field_is_required():
    toy, other = cli.parse([Toy, ("other", Other)], ["--n", "4", "somewhere"])
    assert toy.n == other.n == 4 and other.where == "somewhere"
    text = _help(cli.build_parser(Toy, ("other", Other)))
    assert text.count("--n N") == 2 and "other: DIR a directory" in text  # usage + one flag

    @validated
    class Clash:
        n: int = option(4, "another count")

    with pytest.raises(ValueError, match="declared differently"):
        cli.build_parser(Toy, Clash)


@pytest.mark.parametrize("argv,line", [
    (["--n", "0"], "error: --n must be >= 1, got 0"),
    (["--rate", "0"], "error: --rate must be > 0.0, got 0.0"),
    (["--mode", "c"], "error: --mode 'c' is not one of a, b"),
    (["--eval", "x", "--n", "2"], None),  # no domain on eval_mode: accepted
    (["--n", "x"], "error: argument --n: invalid int value: 'x' (see --help)"),
    (["--bogus"], "error: unrecognized arguments: --bogus (see --help)"),
])
def test_a_bad_value_is_one_line_naming_the_flag_and_exit_2(argv, line, capsys):
    code = cli.run(lambda a: cli.parse([Toy], a), argv)
    err = capsys.readouterr().err
    if line is None:
        assert code == 0 and err == ""
    else:
        assert code == 2 and err == line + "\n"


def _entry_points():
    from fedjax_gen.audit import command as audit
    from fedjax_gen.compare import command as compare
    from fedjax_gen.runners import attack
    from fedjax_gen.runners.evaluation import EvaluateOptions

    methods = cli._classes(__import__("fedjax_gen.methods", fromlist=["get"]).get("dct_gmm"))
    return {
        "method": (cli.main_for("dct_gmm"), methods),
        "gan": (cli.main_for("dp_fedavg_gan", algorithms=("dp_fedavg_gan", "fedgan")), methods[:1]),
        "attack": (attack.main, attack._option_classes()),
        "audit": (audit.main, audit._OPTIONS),
        "evaluate": (cli.evaluate_main, [EvaluateOptions]),
        "compare": (compare.main, [compare.CompareOptions]),
    }


@pytest.mark.parametrize("name", ["method", "gan", "attack", "audit", "evaluate", "compare"])
def test_every_entry_points_help_lists_its_option_classes_flags(name, capsys):
    main, classes = _entry_points()[name]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in cli.flags(*classes).values():
        assert flag in text, (name, flag)
    if name == "attack":
        assert "fbb" in text and "logan" in text  # the registered attacks, listed after the flags


def test_each_entry_point_refuses_a_bad_value_in_one_line_and_writes_nothing(tmp_path, capsys):
    from fedjax_gen.audit import command as audit
    from fedjax_gen.compare import command as compare
    from fedjax_gen.runners import attack

    out = str(tmp_path / "never")
    for main, argv, line in [
        (cli.main_for("dct_gmm"), ["--clients", "0", "--out", out], "error: --clients must be >= 1, got 0"),
        (attack.main, ["--run", out, "--num-queries", "1"], "error: --num-queries must be >= 2, got 1"),
        (audit.main, ["--epsilon", "1", "--out", out, "--confidence", "1"], "error: --confidence must be < 1.0, got 1.0"),
        (cli.evaluate_main, [out, "--eval", "none"], "error: --eval 'none' is not one of full, quick"),
        (compare.main, ["--scale", "huge", "--out", out], "error: --scale 'huge' is not one of tiny, quick, full"),
        (compare.main, ["--attack-queries", "1", "--out", out], "error: --attack-queries must be >= 2, got 1"),
    ]:
        assert cli.run(main, argv) == 2
        assert capsys.readouterr().err == line + "\n"
    assert os.listdir(tmp_path) == []


def test_compare_options_keep_the_experiments_table_flags():
    from fedjax_gen.compare.command import TABLE_FIELDS, CompareOptions

    ours = {f.name: f for f in dataclasses.fields(CompareOptions)}
    for f in dataclasses.fields(DataConfig):
        if f.name in TABLE_FIELDS:  # same flag and help, default None (a cell keeps DataConfig's)
            assert dict(ours[f.name].metadata) == dict(f.metadata) and ours[f.name].default is None


def test_compare_options_become_the_study(monkeypatch, tmp_path):
    """--tiny: tiny presets, 1 seed, budgets none,10; the study is run by calling study.run_study."""
    from fedjax_gen.compare import command, study

    calls = []
    monkeypatch.setattr(study, "run_study", lambda s, command="": calls.append(s) or {"rows": []})
    root = str(tmp_path / "study")
    command.main(["--tiny", "--methods", "dct_gmm,dense", "--clients", "6", "--max-train", "120", "--out", root])
    (s,) = calls
    assert s == study.Study(root=root, dataset="digits", clients=6, partitions=("dirichlet:0.1",),
                            methods=("dct_gmm", "dense"), budgets=(None, 10.0), seeds=1, scale="tiny",
                            max_train=120)


def _finished_cell(root, eval_mode="full"):
    from fedjax_gen.compare import grid

    cell = grid.Cell("dct_gmm", "iid", None, 0)
    out = os.path.join(root, cell.name)
    os.makedirs(out)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"eval": eval_mode}, f)
    return cell, out


def _no_argv(monkeypatch):
    """The study must not go through an entry point's main (nor a subprocess)."""
    import subprocess

    from fedjax_gen.runners import attack

    def refuse(*a, **k):
        raise AssertionError("the study went through an entry point")

    for obj, name in ((attack, "main"), (cli, "run"), (subprocess, "run"), (subprocess, "Popen")):
        monkeypatch.setattr(obj, name, refuse)


def test_the_study_calls_the_attack_runner_with_option_dataclasses(monkeypatch, tmp_path):
    from fedjax_gen.compare import grid, study
    from fedjax_gen.runners import attack

    calls = []
    monkeypatch.setattr(attack, "run_attacks", lambda cfg, settings=(): calls.append((cfg, settings)) or {})
    _no_argv(monkeypatch)
    cell, out = _finished_cell(str(tmp_path))
    s = study.Study(root=str(tmp_path), methods=("dct_gmm",), scale="tiny", attack_queries=17)
    assert study.run_cell(s, cell) == "ok"
    (cfg, settings), = calls
    assert cfg == attack.AttackConfig(run=out, num_queries=17)
    values = {k: v for x in settings for k, v in dataclasses.asdict(x).items()}
    for field, value in grid.ATTACK_SETTINGS["tiny"].items():  # the tiny preset reached the runner as fields
        assert values[field] == value, field


def test_a_refused_attack_is_one_worded_line_and_the_cell_says_so(monkeypatch, tmp_path, capsys):
    from fedjax_gen.compare import study
    from fedjax_gen.runners import attack

    def refuse(cfg, settings=()):
        raise InvalidValue("num_queries", "{num_queries} must be at most the run's members")

    monkeypatch.setattr(attack, "run_attacks", refuse)
    cell, _ = _finished_cell(str(tmp_path))
    assert study.run_cell(study.Study(root=str(tmp_path), scale="tiny"), cell) == "attack failed"
    assert capsys.readouterr().err == "error: --num-queries must be at most the run's members\n"


def test_the_study_scores_an_unscored_run_by_calling_evaluate_run(monkeypatch, tmp_path):
    from fedjax_gen.compare import study
    from fedjax_gen.runners import evaluation

    calls = []
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: calls.append((a, k)))
    _no_argv(monkeypatch)
    cell, out = _finished_cell(str(tmp_path), eval_mode="none")
    assert study.run_cell(study.Study(root=str(tmp_path), scale="tiny", eval_mode="quick", attack=False), cell) == "ok"
    assert calls == [((out, "quick"), {"progress": False})]


def _imports(path: pathlib.Path) -> set:
    """Every fedjax_gen module a source file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fedjax_gen")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedjax_gen"):
            for a in node.names:  # `from fedjax_gen.compare import study`: a submodule, else a name
                sub = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.add(sub if is_module else node.module)
    return out


def _module_path(name: str) -> pathlib.Path:
    base = PACKAGE.parent / name.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_no_import_cycle_through_cli_and_no_argparse_outside_it():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = _imports(path)
        if path.name != "cli.py":
            assert "argparse" not in path.read_text(), f"{path.relative_to(PACKAGE.parent)} uses argparse"
    seen, todo = set(), list(graph["fedjax_gen.cli"])
    while todo:  # everything cli imports, transitively (function-level imports included)
        name = todo.pop()
        if name in seen or not _module_path(name).exists():
            continue
        seen.add(name)
        todo += graph.get(name, ())
    assert "fedjax_gen.cli" not in seen
    users = {n for n, deps in graph.items() if "fedjax_gen.cli" in deps}
    assert {"fedjax_gen.runners.attack", "fedjax_gen.audit.command", "fedjax_gen.compare.command"} <= users


def test_attack_settings_from_field_values_reach_every_class_that_declares_them():
    import dataclasses as dc

    from fedjax_gen.runners import attack

    settings = attack.settings_from({"steps": 7})
    declaring = [s for s in settings if "steps" in {f.name for f in dc.fields(s)}]
    assert declaring and all(s.steps == 7 for s in declaring)
    others = [s for s in settings if s not in declaring]
    assert all(s == type(s)() for s in others)  # the rest keep their defaults
    with pytest.raises(ValueError, match="no_such_field"):
        attack.settings_from({"no_such_field": 1})
