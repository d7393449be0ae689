"""Issue 14, sections 1-4: a refused run touches nothing, one writer per run directory,
non-finite clients are dropped and counted, every bad flag is one line and exit 2 with
nothing written, metrics are strict JSON, interrupted runs finish with --resume, and the saved
uploads are the ones the server received. Issue 29: only what a run recorded writing
(.manifest.jsonl) is removed or replaced, by every entry point, and the faults that gave
tracebacks or silently wrong results are one line too."""

import csv
import glob
import hashlib
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.audit.canaries import CanaryAudit, plan_for_audit
from fedjax_gen.audit.command import main as audit_main
from fedjax_gen.compare.command import main as compare_main
from fedjax_gen.data.client_data import ClientData
from fedjax_gen.errors import RunDirError
from fedjax_gen.federated import ClientOutput, Execution, FederatedAlgorithm, make_round
from fedjax_gen.privacy.clipping import clip_by_global_norm
from fedjax_gen.run_dir import MANIFEST, RunDir, dumps
from fedjax_gen.runners import attack as attack_runner

main = cli.main_for("dp_fedavg_gan", algorithms=("dp_fedavg_gan", "fedgan"))
TINY = ["--clients", "10", "--clients-per-round", "4", "--max-train", "200", "--width", "8", "--latent-dim", "8",
        "--local-steps", "1", "--batch-size", "8", "--gen-steps", "1", "--num-synthetic", "100",
        "--tstr-steps", "20", "--fid-classifier-steps", "50", "--no-progress", "--execution", "loop"]


def _run(argv, capsys):
    code = cli.run(main, argv)
    return code, capsys.readouterr().err.strip()


def _digest(path) -> dict:
    """Every file below `path` with its bytes' hash (the directory's whole content)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trust") / "run")
    assert cli.run(main, TINY + ["--rounds", "2", "--checkpoint-every", "1", "--out", out]) == 0
    return out


def test_existing_out_with_user_files_is_refused_untouched(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        code, err = _run(TINY + ["--rounds", "1", "--out", str(d)] + extra, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "--out" in err
        assert (d / "precious.txt").read_text() == "keep" and os.listdir(d) == ["precious.txt"]


def test_finished_run_and_fork_onto_its_source_are_refused_byte_identical(finished, capsys):
    before = _digest(finished)
    for argv in (TINY + ["--rounds", "2", "--out", finished],
                 TINY + ["--rounds", "3", "--from-checkpoint", f"{finished}:1", "--out", finished]):
        code, err = _run(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "already exists" in err
        assert _digest(finished) == before


def test_second_writer_is_refused_naming_the_holder(finished, capsys):
    holder = RunDir(finished).lock()
    try:
        before = _digest(finished)
        code, err = _run(["--out", finished, "--resume", "--rounds", "3", "--no-progress"], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and f"process {os.getpid()}" in err
        assert _digest(finished) == before
        with pytest.raises(RunDirError, match="in use"):
            RunDir(finished).lock()
    finally:
        holder.unlock()


def _counting_algorithm():
    """Each client uploads [its count]; the client holding 3 examples uploads NaN."""

    def client_update(message, client, key):
        n = client.counts.astype(jnp.float32)
        value = jnp.where(client.counts == 3, jnp.nan, n)
        return ClientOutput({"v": value}, jnp.float32(1.0), {})

    def server_update(state, summed, num_sampled, key):
        return state, {"sum": summed.upload["v"], "weight": summed.weight}

    return FederatedAlgorithm("count", lambda k: jnp.zeros(()), lambda s: s, client_update, server_update)


@pytest.mark.parametrize("execution", [Execution("vmap"), Execution("chunked", 1), Execution("chunked", 2)])
def test_nonfinite_client_is_dropped_and_counted(execution):
    counts = np.array([1, 2, 3, 4], np.int32)
    mask = np.arange(4)[None, :] < counts[:, None]
    data = ClientData(np.zeros((4, 4, 2, 2, 1), np.uint8), np.zeros((4, 4), np.int32), mask, counts)
    rnd = make_round(_counting_algorithm(), num_clients=4, clients_per_round=4, execution=execution)
    _, metrics = rnd.step(jnp.zeros(()), jax.device_put(data), jax.random.key(0))
    assert float(metrics["sum"]) == 1 + 2 + 4  # the NaN client contributes exactly 0 ...
    assert float(metrics["weight"]) == 3  # ... its weight is removed ...
    assert float(metrics["nonfinite_clients"]) == 1  # ... and it is counted


def test_user_level_clip_turns_inf_into_zeros_not_nan():
    clipped, norm = clip_by_global_norm({"a": jnp.array([jnp.inf, 1.0]), "b": jnp.array([jnp.nan])}, 0.5)
    assert not np.isfinite(float(norm))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(clipped))
    clipped, _ = clip_by_global_norm({"a": jnp.array([3.0, 4.0])}, 1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8], rtol=1e-6)


def test_metrics_are_strict_json():
    text = dumps({"loss": float("nan"), "eps": float("inf"), "x": np.float32(0.5), "ok": [1.0, float("-inf")]})
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert parsed == {"loss": None, "eps": None, "x": 0.5, "ok": [1.0, None]}


@pytest.mark.parametrize("argv, needle", [
    (["--rounds-per-call", "0"], "--rounds-per-call"),
    (["--gen-batch-size", "0"], "--gen-batch-size"),
    (["--width", "0"], "--width"),
    (["--latent-dim", "0"], "--latent-dim"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--eval-every", "-3"], "--eval-every"),
    (["--dp", "user", "--epsilon", "1", "--clip", "0"], "--clip"),
    (["--max-examples-per-client", "0"], "--max-examples-per-client"),
    (["--client-lr", "nan"], "--client-lr"),
    (["--rounds", "abc"], "--rounds"),
    (["--from-checkpoint", "somewhere:abc"], "--from-checkpoint"),
    (["--resume"], "--resume"),
])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    code, err = _run(TINY + ["--rounds", "1", "--out", str(out)] + argv, capsys)
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "run"):
        code, err = _run(TINY + ["--rounds", "1", "--out", str(out)], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "--out" in err
    assert f.read_text() == "x" and os.listdir(tmp_path) == ["file"]


def test_resume_after_a_torn_metrics_line(finished, tmp_path, capsys):
    run = str(tmp_path / "torn")
    shutil.copytree(finished, run)
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"round": 3, "d_lo')  # killed mid-write
    assert _run(["--out", run, "--resume", "--rounds", "3", "--no-progress"], capsys)[0] == 0
    rounds = [json.loads(line)["round"] for line in open(os.path.join(run, "metrics.jsonl"))]
    assert rounds == [1, 2, 3]


def test_run_killed_before_export_is_finished_by_resume(finished, tmp_path, capsys):
    run = str(tmp_path / "killed")
    shutil.copytree(finished, run)
    original = json.load(open(os.path.join(finished, "results.json")))
    for name in ("results.json", "synthetic.npz", "samples.png"):
        os.remove(os.path.join(run, name))
    assert _run(["--out", run, "--resume", "--no-progress"], capsys)[0] == 0
    again = json.load(open(os.path.join(run, "results.json")))
    assert again["resumed_export"] and again["rounds"] == original["rounds"]
    assert again["tstr_accuracy"] == original["tstr_accuracy"] and again["fid"] == original["fid"]
    np.testing.assert_array_equal(np.load(os.path.join(run, "synthetic.npz"))["x"],
                                  np.load(os.path.join(finished, "synthetic.npz"))["x"])
    code, err = _run(["--out", run, "--resume", "--no-progress"], capsys)  # finished now: refused
    assert code == 2 and "finished" in err


def test_saved_uploads_are_compressed_as_sent(tmp_path):
    """uploads.npz is what the server received: with --uplink topk:F each client's embedding
    keeps ceil(F n) entries (the raw upload would be dense)."""
    out = tmp_path / "merf"
    cli.main_for("dp_merf")(["--clients", "6", "--max-train", "120", "--num-features", "64", "--gen-steps", "2",
                             "--width", "8", "--latent-dim", "8", "--num-synthetic", "50", "--tstr-steps", "5",
                             "--fid-classifier-steps", "5", "--no-progress", "--uplink", "topk:0.25",
                             "--out", str(out)])
    saved = np.load(out / "uploads.npz")
    emb = saved["embedding"].reshape(6, -1)
    k = int(np.ceil(0.25 * emb.shape[1]))
    assert np.all((emb != 0).sum(1) <= k) and np.any((emb != 0).sum(1) == k)


# --- issue 29: only what a run wrote is ever removed or replaced ----------------------------------
# experiments/{fedgan,dct_gmm,dp_merf,dosfl,dense}.py: each refuses at its run directory, before training
TRAINING_ENTRY_POINTS = {"dp_fedavg_gan": ["--clients-per-round", "3"], "dct_gmm": [], "dp_merf": [], "dosfl": [],
                         "dense": []}
SMALL = ["--dataset", "digits", "--clients", "6", "--max-train", "120", "--no-progress"]


def _run_main(main_, argv, capsys):
    code = cli.run(main_, argv)
    return code, capsys.readouterr().err.strip()


def _err(code_and_err):
    code, err = code_and_err
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("method", TRAINING_ENTRY_POINTS)
def test_overwrite_never_removes_a_file_no_run_wrote(method, finished, tmp_path, capsys):
    main_, small = cli.main_for(method), SMALL + TRAINING_ENTRY_POINTS[method]
    run = tmp_path / "run"
    shutil.copytree(finished, run)  # a real run directory, with its manifest
    (run / "my_analysis.txt").write_text("mine")  # the user's, saved inside it
    (tmp_path / "notes.txt").write_text("beside")
    before = _digest(tmp_path)
    err = _err(_run_main(main_, small + ["--out", str(run), "--overwrite"], capsys))
    assert "my_analysis.txt" in err and "--overwrite" in err
    # a user's folder that merely holds a config.json (no manifest: no run wrote it)
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text("{}")
    (user / "results_final.csv").write_text("a,b\n")
    before = _digest(tmp_path)
    err = _err(_run_main(main_, small + ["--out", str(user), "--overwrite"], capsys))
    assert MANIFEST in err and str(user) in err
    assert _digest(tmp_path) == before


def test_overwrite_replaces_exactly_what_the_run_recorded(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (tmp_path / "notes.txt").write_text("beside")
    stale = run / "results.json.tmp"  # a kill mid-write leaves the atomic writer's temporary: ours
    stale.write_text("{")
    code, err = _run(TINY + ["--rounds", "1", "--out", str(run), "--overwrite"], capsys)
    assert code == 0, err
    assert not stale.exists() and (tmp_path / "notes.txt").read_text() == "beside"
    assert json.load(open(run / "results.json"))["rounds"] == 1
    assert RunDir(str(run)).recorded("results.json") and RunDir(str(run)).run_id != RunDir(finished).run_id


def test_remove_keeps_what_no_run_wrote(tmp_path):
    rd = RunDir.create(str(tmp_path / "r"), {"method": "x"})
    rd.write_json("results.json", {"a": 1})
    rd.append_metrics({"round": 1})
    rd.unlock()
    (tmp_path / "r" / "mine.txt").write_text("keep")
    assert rd.remove() == ["mine.txt"]
    assert sorted(os.listdir(tmp_path / "r")) == [MANIFEST, "mine.txt"]
    os.remove(tmp_path / "r" / "mine.txt")
    assert rd.remove() == [] and not (tmp_path / "r").exists()


def test_attack_never_replaces_a_users_file(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "attack_results.json").write_text('{"mine": true}')
    before = _digest(run)
    err = _err(_run_main(attack_runner.main, ["--run", str(run), "--num-queries", "10"], capsys))
    assert "attack_results.json" in err and _digest(run) == before


def test_audit_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    block = plan_for_audit(CanaryAudit(clients=20, canaries=10, clients_per_round=10, rounds=2), delta=1e-5,
                           noise_multiplier=2.0).report(2)
    results = json.dumps({"clients": 20, "clients_per_round": 10, "rounds": 2, "privacy": block})
    (run / "results.json").write_text(results)
    (run / "audit.json").write_text("mine")  # no run recorded writing it
    (tmp_path / "file").write_text("x")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "results.json").write_text(results[: len(results) // 2])
    before = _digest(tmp_path)
    for argv, needle in ((["--run", str(run)], "audit.json"),
                         (["--epsilon", "1", "--out", str(tmp_path / "file")], "is a file"),
                         (["--run", str(tmp_path / "trunc")], "truncated")):
        assert needle in _err(_run_main(audit_main, argv + ["--dim", "64"], capsys))
    assert _digest(tmp_path) == before
    os.remove(run / "audit.json")
    assert cli.run(audit_main, ["--run", str(run), "--dim", "64"]) == 0
    assert cli.run(audit_main, ["--run", str(run), "--dim", "64"]) == 0  # its own audit.json: replaced
    assert RunDir(str(run)).recorded("audit.json")
    json.loads((run / "audit.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_collect_tables_the_readable_runs_names_the_rest_and_keeps_user_files(finished, tmp_path, capsys):
    root = tmp_path / "study"
    root.mkdir()
    shutil.copytree(finished, root / "good")
    shutil.copytree(finished, root / "truncated")
    text = (root / "truncated" / "results.json").read_text()
    (root / "truncated" / "results.json").write_text(text[: len(text) // 2])
    shutil.copytree(finished, root / "no_config")
    os.remove(root / "no_config" / "config.json")
    (root / "report.html").write_text("<p>my report</p>")
    before = _digest(tmp_path)
    err = _err(_run_main(compare_main, ["--collect", str(root)], capsys))
    assert "report.html" in err and _digest(tmp_path) == before
    os.remove(root / "report.html")
    for _ in range(2):  # the second collect replaces what the first wrote
        assert cli.run(compare_main, ["--collect", str(root)]) == 0
        out = capsys.readouterr().out
        assert f"skipped {root / 'truncated'}" in out and f"skipped {root / 'no_config'}" in out
        rows = list(csv.DictReader(open(root / "comparison.csv")))
        assert len(rows) == 1 and rows[0]["run"] == "good"  # named relative to the study root
    (tmp_path / "file.txt").write_text("x")
    before = _digest(tmp_path)
    for argv in (["--tiny", "--methods", "dct_gmm", "--budgets", "none", "--out", str(tmp_path / "file.txt")],
                 ["--tiny", "--methods", "dct_gmm", "--budgets", "none", "--out", str(tmp_path / "file.txt"), "--slurm"],
                 ["--collect", str(tmp_path / "file.txt")]):
        assert "file" in _err(_run_main(compare_main, argv, capsys))
    assert _digest(tmp_path) == before


# --- issue 29: every failure one line ------------------------------------------------------------
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # how pytest shows the tracebacks
def test_corrupt_checkpoint_data_is_one_line_without_orbax_tracebacks(finished, tmp_path, capsys):
    run = tmp_path / "corrupt"
    shutil.copytree(finished, run)
    os.remove(run / "results.json")
    for f in glob.glob(str(run / "checkpoints" / "2" / "default" / "d" / "*")):
        with open(f, "wb") as fh:
            fh.write(os.urandom(40))
    before = _digest(run)
    code = cli.run(main, TINY + ["--rounds", "2", "--resume", "--out", str(run)])
    time.sleep(1.0)  # the failed restore's other reads finish late, on orbax's closed loop
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unreadable" in err, err
    assert _digest(run) == before


def test_a_run_that_diverges_before_any_checkpoint_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "div"
    code, err = _run(TINY + ["--rounds", "2", "--checkpoint-every", "10", "--server-lr", "1e30", "--out", str(out)],
                     capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no checkpoint was saved" in err and "None" not in err, err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_resume_after_the_checkpointed_rounds_record_was_torn_rewrites_it(finished, tmp_path, capsys):
    run = tmp_path / "torn2"
    shutil.copytree(finished, run)
    lines = open(run / "metrics.jsonl").read().splitlines()
    assert json.loads(lines[-1])["round"] == 2  # checkpoint 2 exists; its record is torn below
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:20]]))
    assert _run(["--out", str(run), "--resume", "--rounds", "3", "--no-progress"], capsys)[0] == 0
    assert [json.loads(line)["round"] for line in open(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("entry,argv,needle", [
    (cli.main_for("dct_gmm"), ["--temperature", "inf"], "--temperature must be a finite number"),
    (cli.main_for("dct_gmm"), ["--count-weight", "-inf"], "--count-weight"),
    (compare_main, ["--dataset", "nope", "--tiny"], "unknown dataset"),
    (compare_main, ["--partitions", "iid,bogus:1", "--tiny"], "unknown partition"),
    (compare_main, ["--partitions", "shards:x", "--tiny"], "K must be an integer"),
])
def test_silently_wrong_inputs_are_refused_before_anything_is_written(entry, argv, needle, tmp_path, capsys):
    out = tmp_path / "never"
    err = _err(_run_main(entry, argv + ["--out", str(out)], capsys))
    assert needle in err and os.listdir(tmp_path) == []
