"""fedjax_gen/run_dir.py, the run-directory contract, called directly: create refuses what it did
not create and, under overwrite, removes only what .manifest.jsonl records; one writer at a time;
results and metrics are strict JSON that read back equal; truncate_metrics keeps rounds <= n.
(tests/runners/test_trustworthy_runs.py checks the same contract through every entry point.)"""

import json
import os

import numpy as np
import pytest

from fedjax_gen.errors import RunDirError, UserError
from fedjax_gen.run_dir import LOCK, MANIFEST, REQUIRED_RESULTS, RunDir


def _tree(path) -> dict:
    """Every file below `path` with its bytes."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


def _finished(path) -> RunDir:
    rd = RunDir.create(str(path), {"method": "x"})
    rd.write_json("results.json", {"a": 1})
    rd.append_metrics({"round": 1})
    rd.unlock()
    return rd


def test_create_writes_a_locked_recorded_run_and_uses_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    rd = RunDir.create(str(tmp_path / "empty"), {"method": "x", "clients": 3})
    try:
        assert rd.exists() and rd.read_json("config.json")["clients"] == 3
        assert sorted(os.listdir(rd.path)) == sorted([LOCK, MANIFEST, "config.json"])
        # checkpoints/ is recorded before orbax makes it, so overwrite may remove it
        assert rd.recorded("config.json") and rd.recorded("checkpoints/0/x") and not rd.recorded("mine.txt")
        assert len(rd.run_id) == 32
        assert open(rd.file(LOCK)).read() == str(os.getpid())
        with pytest.raises(RunDirError, match="in use by process"):
            RunDir(rd.path).lock()  # create hands it over locked
    finally:
        rd.unlock()
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]  # no staging directory left


@pytest.mark.parametrize("overwrite", [False, True])
def test_create_refuses_a_directory_it_did_not_create_and_touches_nothing(tmp_path, overwrite):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    fake = tmp_path / "fake"  # a config.json but no manifest: no run wrote it
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    (tmp_path / "file").write_text("x")
    before = _tree(tmp_path)
    for path, needle in ((user, "already exists" if not overwrite else "not a fedjax_gen run directory"),
                         (fake, "already exists" if not overwrite else MANIFEST),
                         (tmp_path / "file", "is not a directory")):
        with pytest.raises(RunDirError, match=needle) as e:
            RunDir.create(str(path), {"method": "x"}, overwrite=overwrite)
        assert "\n" not in str(e.value) and "out" in str(e.value)
    assert _tree(tmp_path) == before


def test_overwrite_removes_only_what_the_manifest_records(tmp_path):
    old = _finished(tmp_path / "run")
    old_id = old.run_id
    (tmp_path / "beside.txt").write_text("beside")
    (tmp_path / "run" / "results.json.tmp").write_text("{")  # a killed atomic write: the run's own

    # A file the user put inside: overwrite refuses, naming it, and removes nothing.
    (tmp_path / "run" / "mine.txt").write_text("keep")
    before = _tree(tmp_path)
    with pytest.raises(RunDirError, match="mine.txt was not written by fedjax_gen"):
        RunDir.create(str(tmp_path / "run"), {"method": "x"}, overwrite=True)
    assert _tree(tmp_path) == before

    os.remove(tmp_path / "run" / "mine.txt")
    new = RunDir.create(str(tmp_path / "run"), {"method": "y"}, overwrite=True)
    new.unlock()
    assert sorted(os.listdir(new.path)) == sorted([LOCK, MANIFEST, "config.json"])
    assert new.run_id != old_id and new.read_json("config.json")["method"] == "y"
    assert (tmp_path / "beside.txt").read_text() == "beside"


def test_overwrite_refuses_a_run_another_process_holds(tmp_path):
    rd = _finished(tmp_path / "run")
    holder = RunDir(rd.path).lock()
    try:
        before = _tree(tmp_path)
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            RunDir.create(rd.path, {"method": "x"}, overwrite=True)
        assert _tree(tmp_path) == before
    finally:
        holder.unlock()


def test_lock_is_one_writer_at_a_time_until_unlock(tmp_path):
    rd = _finished(tmp_path / "run")
    a, b = RunDir(rd.path), RunDir(rd.path)
    assert a.lock() is a and a.lock() is a  # re-locking one's own lock is a no-op
    with pytest.raises(RunDirError) as e:
        b.lock()
    assert str(e.value).count("\n") == 0 and f"process {os.getpid()}" in str(e.value)
    a.unlock()
    with b.locked():
        with pytest.raises(RunDirError, match="in use"):
            a.lock()
    a.lock()  # b's context released it
    a.unlock()


def test_write_results_and_read_json_round_trip_as_strict_json(tmp_path):
    rd = _finished(tmp_path / "run")
    results = {k: 1 for k in REQUIRED_RESULTS}
    results.update(fid=float("nan"), tstr_accuracy=np.float32(0.5), clients=np.int64(7),
                   extra={"inf": float("inf"), "xs": np.arange(3)})
    rd.write_results(results)
    got = rd.read_json("results.json")
    assert got == {**{k: 1 for k in REQUIRED_RESULTS}, "fid": None, "tstr_accuracy": 0.5, "clients": 7,
                   "extra": {"inf": None, "xs": [0, 1, 2]}}
    json.loads(open(rd.file("results.json")).read(), parse_constant=lambda c: pytest.fail(c))
    assert rd.recorded("results.json") and not os.path.exists(rd.file("results.json.tmp"))
    with pytest.raises(ValueError, match="missing \\['wall_seconds'"):
        rd.write_results({k: 1 for k in REQUIRED_RESULTS if k != "wall_seconds"})
    with pytest.raises(UserError, match="cannot read"):
        rd.read_json("absent.json")


def test_truncate_metrics_keeps_rounds_up_to_n_and_drops_a_torn_last_line(tmp_path):
    rd = _finished(tmp_path / "run")
    for r in (2, 3, 4):
        rd.append_metrics({"round": r, "loss": float(r)})
    rd.append_metrics({"eval": "final"})  # no round: kept as earlier than any round (-1)
    with open(rd.file("metrics.jsonl"), "a") as f:
        f.write('{"round": 5, "lo')  # a kill mid-write
    assert [r.get("round") for r in rd.read_metrics()] == [1, 2, 3, 4, None]
    rd.truncate_metrics(2)
    assert rd.read_metrics() == [{"round": 1}, {"round": 2, "loss": 2.0}, {"eval": "final"}]
    rd.truncate_metrics(0)
    assert rd.read_metrics() == [{"eval": "final"}]

    with open(rd.file("metrics.jsonl"), "w") as f:
        f.write('{"round": 1}\n{bad\n{"round": 2}\n')  # corrupt, not last: no torn write did that
    with pytest.raises(UserError, match="line 2 is corrupt"):
        rd.read_metrics()


def test_check_replaceable_refuses_only_a_name_no_run_recorded(tmp_path):
    rd = _finished(tmp_path / "run")
    rd.check_replaceable("results.json", "the attack")  # the run's own: replaceable
    rd.check_replaceable("attack_results.json", "the attack")  # absent: fine
    (tmp_path / "run" / "attack_results.json").write_text("{}")
    with pytest.raises(UserError, match="the attack never replaces it"):
        rd.check_replaceable("attack_results.json", "the attack")
