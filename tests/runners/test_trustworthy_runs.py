"""Issue 14, sections 1-4: a refused run touches nothing, one writer per run directory,
non-finite clients are dropped and counted, every bad flag is one line and exit 2 with
nothing written, metrics are strict JSON, interrupted runs finish with --resume, and the saved
uploads are the ones the server received."""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.data.client_data import ClientData
from fedjax_gen.errors import RunDirError
from fedjax_gen.federated import ClientOutput, Execution, FederatedAlgorithm, make_round
from fedjax_gen.privacy.clipping import clip_by_global_norm
from fedjax_gen.run_dir import RunDir, dumps

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
