"""The bad-input probe: every entry point against inputs and faults a hostile user would try,
at tiny size on the embedded digits. Each case must end in exactly one line on stderr
("error: ..."), exit code 2, no traceback, and nothing written or removed anywhere in the
sandbox (a ledger may only gain the record of its refused attempt).

    python scripts/probe_bad_inputs.py            # every case (a minute or two on 2 cores)
    python scripts/probe_bad_inputs.py --quick    # one method's generic cases, every special case

The cases are generated from the registries (every registered method's experiment, and each of
its float options as nan and inf), so a new method or option is probed without editing this
file; tests/test_probe.py runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import typing

from fedjax_gen.config import option, validated

CLEAN = "clean"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    entry: str  # "method:<name>" | "attack" | "audit" | "compare" | "evaluate"
    argv: tuple
    setup: object = None  # (root) -> None, run before the snapshot
    ledger: str | None = None  # a file that may change: only by one refused attempt on record


def _digest(root: str) -> dict:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(base, name)
            rel = os.path.relpath(p, root)
            out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
    return out


def _entry(name: str):
    from fedjax_gen import cli

    if name.startswith("method:"):
        return cli.main_for(name.split(":", 1)[1])
    if name == "attack":
        from fedjax_gen.runners.attack import main
        return main
    if name == "audit":
        from fedjax_gen.audit.command import main
        return main
    if name == "compare":
        from fedjax_gen.compare.command import main
        return main
    if name == "evaluate":
        return cli.evaluate_main
    raise ValueError(name)


SMALL = ("--dataset", "digits", "--clients", "6", "--max-train", "120", "--no-progress")
_PER_METHOD = {"dp_fedavg_gan": ("--clients-per-round", "3"), "fedgan": ("--clients-per-round", "3")}


def _float_options(method) -> list[str]:
    from fedjax_gen import config as fconfig
    from fedjax_gen.cli import flag_table

    table = flag_table(method)
    out = []
    for cls in (method.Options, fconfig.RunConfig, fconfig.DataConfig):
        types = fconfig.field_types(cls)
        out += [table[f.name] for f in dataclasses.fields(cls)
                if f.metadata and types[f.name][0] is float and f.name in table]
    return sorted(set(out))


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def cases(root: str, run: str, quick: bool = False) -> list[Case]:
    """The matrix. `run`: a finished tiny dct_gmm run (copied where a case changes it)."""
    from fedjax_gen import methods

    def copy_run(name, mutate=None):
        def setup(r):
            dst = os.path.join(r, name)
            if not os.path.exists(dst):
                shutil.copytree(run, dst)
            if mutate:
                mutate(dst)
        return setup

    user_dir = os.path.join(root, "user_folder")
    out = os.path.join(root, "new_out")
    names = ["dct_gmm"] if quick else list(methods.names())
    cs = []
    for m in names:
        base = SMALL + _PER_METHOD.get(m, ())
        e = f"method:{m}"
        cs += [
            Case(f"{m}: unknown dataset", e, ("--dataset", "nope", "--out", out)),
            Case(f"{m}: more clients than examples", e, base + ("--clients", "100000", "--out", out)),
            Case(f"{m}: zero clients", e, base + ("--clients", "0", "--out", out)),
            Case(f"{m}: bad partition", e, base + ("--partition", "dirichlet:-1", "--out", out)),
            Case(f"{m}: unknown flag", e, base + ("--bogus", "--out", out)),
            Case(f"{m}: --out is a file", e, base + ("--out", os.path.join(root, "a_file")),
                 lambda r: _write(os.path.join(r, "a_file"), "x")),
            Case(f"{m}: --out under a file", e, base + ("--out", os.path.join(root, "a_file", "run")),
                 lambda r: _write(os.path.join(r, "a_file"), "x")),
            Case(f"{m}: --overwrite a user's folder with a config.json", e,
                 base + ("--out", user_dir, "--overwrite"),
                 lambda r: (_write(os.path.join(r, "user_folder", "config.json"), "{}"),
                            _write(os.path.join(r, "user_folder", "results_final.csv"), "a\n"))),
            Case(f"{m}: --overwrite a run holding a user's file", e,
                 base + ("--out", os.path.join(root, "run_with_user_file"), "--overwrite"),
                 copy_run("run_with_user_file",
                          lambda d: _write(os.path.join(d, "my_analysis.txt"), "mine"))),
            Case(f"{m}: --resume a missing run", e, base + ("--resume", "--out", os.path.join(root, "missing"))),
            Case(f"{m}: --from-checkpoint a missing run", e,
                 base + ("--from-checkpoint", os.path.join(root, "missing"), "--out", out)),
        ]
        for flag in _float_options(methods.get(m)):
            for v in ("nan", "inf", "-inf"):
                cs.append(Case(f"{m}: {flag} {v}", e, base + (f"{flag}={v}", "--out", out)))
    # the ledger: every file problem refused before anything runs
    fm = SMALL + ("--dp", "example", "--epsilon", "0.5", "--budget", "2", "--em-rounds", "1", "--out", out)
    led = os.path.join(root, "ledgers")
    cs += [
        Case("dct_gmm: ledger in a missing folder", "method:dct_gmm",
             fm + ("--ledger", os.path.join(root, "no_such_folder", "l.json"))),
        Case("dct_gmm: ledger that is not JSON", "method:dct_gmm", fm + ("--ledger", os.path.join(led, "bad.json")),
             lambda r: _write(os.path.join(r, "ledgers", "bad.json"), "{oops")),
        Case("dct_gmm: ledger that is someone else's JSON", "method:dct_gmm",
             fm + ("--ledger", os.path.join(led, "other.json")),
             lambda r: _write(os.path.join(r, "ledgers", "other.json"), '{"name": "not a ledger"}')),
        Case("dct_gmm: ledger that is a folder", "method:dct_gmm", fm + ("--ledger", led),
             lambda r: os.makedirs(os.path.join(r, "ledgers"), exist_ok=True)),
        Case("dct_gmm: ledger over budget", "method:dct_gmm",
             SMALL + ("--dp", "example", "--epsilon", "3", "--budget", "2", "--em-rounds", "1", "--out", out,
                      "--ledger", os.path.join(led, "empty.json")),
             lambda r: os.makedirs(os.path.join(r, "ledgers"), exist_ok=True), ledger=os.path.join(led, "empty.json")),
        Case("dct_gmm: a request raising the ledger's budget", "method:dct_gmm",
             SMALL + ("--dp", "example", "--epsilon", "0.5", "--budget", "100", "--em-rounds", "1", "--out", out,
                      "--ledger", os.path.join(led, "budget2.json")),
             lambda r: _write(os.path.join(r, "ledgers", "budget2.json"), json.dumps(
                 {"deployment": "site", "unit": "example", "delta": 1e-5, "budget": 2.0, "releases": []}))),
        Case("dct_gmm: --temperature inf", "method:dct_gmm", SMALL + ("--temperature", "inf", "--out", out)),
        Case("dct_gmm: corrupt checkpoint data", "method:dct_gmm",
             ("--resume", "--out", os.path.join(root, "corrupt_ckpt")), copy_run("corrupt_ckpt", _corrupt)),
    ]
    # tables (--dataset csv:PATH): bad files and flags, refused methods, budgets the encoding cannot meet
    table = os.path.join(root, "table.csv")
    tab = ("--dataset", f"csv:{table}", "--label-column", "label", "--clients", "6", "--no-progress", "--out", out)
    with_table = lambda more=None: (lambda r: (_write(os.path.join(r, "table.csv"), _TABLE),
                                               more(r) if more else None))
    cs += [
        Case("table: DENSE refuses a table", "method:dense", tab, with_table()),
        Case("table: DOSFL refuses a table", "method:dosfl", tab, with_table()),
        Case("table: missing CSV", "method:dp_merf", tab),
        Case("table: ragged CSV", "method:dp_merf", tab,
             lambda r: _write(os.path.join(r, "table.csv"), "a,b,label\n1,2,x\n3,4\n")),
        Case("table: a file with no records", "method:dct_gmm", tab,
             lambda r: _write(os.path.join(r, "table.csv"), "proto,count,label\n")),
        Case("table: --label-column on an image dataset", "method:dp_merf", SMALL + ("--label-column", "label",
                                                                                     "--out", out)),
        Case("table: unknown --label-column", "method:dp_merf", tab + ("--label-column", "klass"), with_table()),
        Case("table: bad --kinds", "method:dp_merf", tab + ("--kinds", "rate=text"), with_table()),
        Case("table: --schema of another table", "method:dct_gmm", tab + ("--schema", "nsl_kdd"), with_table()),
        Case("table: schema file that is not JSON", "method:dct_gmm", tab + ("--schema", os.path.join(root, "s.json")),
             with_table(lambda r: _write(os.path.join(r, "s.json"), "{oops"))),
        Case("table: --columns-file of another table", "method:dp_merf", tab + ("--columns-file", "nsl_kdd"),
             with_table()),
        Case("table: --augment on a table", "method:dct_gmm", tab + ("--augment", "rotate:10"), with_table()),
        Case("table: unknown --positive-labels", "method:dp_merf", tab + ("--positive-labels", "nrm"), with_table()),
        Case("table: user-level DP without a full schema", "method:dct_gmm", tab + ("--dp", "user", "--epsilon", "1"),
             with_table()),
        Case("table: a budget the private encoding cannot meet", "method:dp_merf", tab + ("--epsilon", "0.01"),
             with_table()),
        Case("table: --model dcgan on a table", "method:fedgan", tab + ("--model", "dcgan", "--clients-per-round", "3"),
             with_table()),
    ]
    # attack / audit / compare / evaluate
    trunc = lambda d: _write(os.path.join(d, "results.json"), open(os.path.join(run, "results.json")).read()[:50])
    cs += [
        Case("attack: missing run", "attack", ("--run", os.path.join(root, "missing"))),
        Case("attack: --run is a file", "attack", ("--run", os.path.join(root, "a_file")),
             lambda r: _write(os.path.join(r, "a_file"), "x")),
        Case("attack: a user's attack_results.json", "attack", ("--run", os.path.join(root, "run_user_attack")),
             copy_run("run_user_attack", lambda d: _write(os.path.join(d, "attack_results.json"), "{}"))),
        Case("audit: --out is a file", "audit", ("--epsilon", "1", "--out", os.path.join(root, "a_file")),
             lambda r: _write(os.path.join(r, "a_file"), "x")),
        Case("audit: truncated results.json", "audit", ("--run", os.path.join(root, "run_truncated")),
             copy_run("run_truncated", trunc)),
        Case("audit: not a user-level run", "audit", ("--run", run)),
        Case("compare: unknown dataset", "compare", ("--dataset", "nope", "--tiny", "--out", out)),
        Case("compare: bad partition", "compare", ("--partitions", "iid,bogus:1", "--tiny", "--out", out)),
        Case("compare: --out is a file", "compare", ("--tiny", "--methods", "dct_gmm", "--budgets", "none", "--out",
                                                     os.path.join(root, "a_file")),
             lambda r: _write(os.path.join(r, "a_file"), "x")),
        Case("compare: --collect a file", "compare", ("--collect", os.path.join(root, "a_file")),
             lambda r: _write(os.path.join(r, "a_file"), "x")),
        Case("compare: --collect over a user's report.html", "compare", ("--collect", os.path.join(root, "study")),
             lambda r: (copy_run(os.path.join("study", "run"))(r),
                        _write(os.path.join(r, "study", "report.html"), "<p>mine</p>"))),
        Case("evaluate: missing run", "evaluate", (os.path.join(root, "missing"),)),
    ]
    return cs


# A tiny labelled table (60 records): a categorical, a count, a rate, three classes.
_TABLE = "proto,count,rate,label\n" + "".join(
    f"{('tcp', 'udp', 'icmp')[i % 3]},{(i * 37) % 500},{(i % 10) / 10:.1f},{('normal', 'dos', 'probe')[i % 3]}\n"
    for i in range(60))


def _corrupt(run_dir: str) -> None:
    os.remove(os.path.join(run_dir, "results.json"))
    for base, _, files in os.walk(os.path.join(run_dir, "checkpoints")):
        if os.path.basename(base) == "d":
            for f in files:
                with open(os.path.join(base, f), "wb") as fh:
                    fh.write(os.urandom(40))


def _ledger_ok(path: str, before: dict, rel: str) -> bool:
    """The ledger changed only by one refused attempt (or not at all)."""
    from fedjax_gen.privacy import ledger as pledger

    if rel not in before and not os.path.exists(path):
        return True
    led = pledger.load(path)
    return (not led.releases and [a.status for a in led.attempts] == ["refused"])


def run_case(case: Case, root: str) -> tuple[str, int | None, str]:
    """(verdict, exit code, stderr): verdict CLEAN or what went wrong."""
    from fedjax_gen import cli

    if case.setup is not None:
        case.setup(root)
    entry = _entry(case.entry)
    if entry is None:
        return CLEAN + " (entry point absent)", None, ""
    before = _digest(root)
    err, unraisable = io.StringIO(), []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(u)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.run(entry, list(case.argv))
        time.sleep(0.05 if not unraisable else 0.5)
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the probe looks for
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.unraisablehook = previous
    text = err.getvalue().strip()
    after = _digest(root)
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if len(text.splitlines()) != 1 or not text.startswith("error:"):
        problems.append(f"{len(text.splitlines())} stderr lines")
    if unraisable:
        problems.append(f"{len(unraisable)} unraisable exceptions")
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if case.ledger is not None:
        rel = os.path.relpath(case.ledger, root)
        if _ledger_ok(case.ledger, before, rel):
            changed = [k for k in changed if k not in (rel, rel + ".lock")]
    if changed:
        problems.append(f"changed {changed[:3]}")
    return (CLEAN if not problems else "; ".join(problems)), code, text


def _fixture_run(root: str) -> str:
    from fedjax_gen import cli

    run = os.path.join(root, "_fixture", "run")
    argv = list(SMALL) + ["--em-rounds", "1", "--num-synthetic", "100", "--tstr-steps", "5",
                          "--fid-classifier-steps", "5", "--save-uploads", "0", "--out", run]
    with contextlib.redirect_stdout(io.StringIO()):
        if cli.run(cli.main_for("dct_gmm"), argv) != 0:
            raise RuntimeError("the probe's fixture run failed")
    return run


def probe(quick: bool = False, only: str | None = None, verbose: bool = True) -> list[tuple[str, str, str]]:
    """Runs the matrix; returns (case, verdict, stderr) for every case."""
    work = tempfile.mkdtemp(prefix="fedjax_gen-probe-")
    try:
        run = _fixture_run(work)
        results = []
        for i, case in enumerate(cases(os.path.join(work, "sandbox"), run, quick)):
            if only and only not in case.name:
                continue
            root = os.path.join(work, f"sandbox{i}")  # every case gets a fresh sandbox
            os.makedirs(root)
            case = _rooted(case, os.path.join(work, "sandbox"), root)
            verdict, code, text = run_case(case, root)
            results.append((case.name, verdict, text))
            if verbose:
                print(f"{'ok ' if verdict.startswith(CLEAN) else 'BAD'} {case.name}: "
                      f"{verdict if not verdict.startswith(CLEAN) else text.splitlines()[0][:110] if text else verdict}",
                      flush=True)
            shutil.rmtree(root, ignore_errors=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rooted(case: Case, placeholder: str, root: str) -> Case:
    """The case with its sandbox paths moved under `root`."""
    fix = lambda s: s.replace(placeholder, root) if isinstance(s, str) else s
    setup = case.setup
    return dataclasses.replace(case, argv=tuple(fix(a) for a in case.argv), ledger=fix(case.ledger),
                               setup=(lambda r: setup(r)) if setup else None)


@validated
class ProbeOptions:
    quick: bool = option(False, "one method's generic cases, every special case")
    only: typing.Optional[str] = option(None, "run the cases whose name contains this")
    json: typing.Optional[str] = option(None, "also write the verdicts here")


def main(argv=None) -> int:
    from fedjax_gen import cli
    from fedjax_gen.errors import UserError

    try:
        (a,) = cli.parse([ProbeOptions], argv, description=__doc__.splitlines()[0])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = probe(a.quick, a.only)
    bad = [r for r in results if not r[1].startswith(CLEAN)]
    print(f"{len(results) - len(bad)}/{len(results)} cases clean")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"case": c, "verdict": v, "stderr": t} for c, v, t in results], f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
