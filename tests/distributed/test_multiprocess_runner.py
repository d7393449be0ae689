"""The whole runner (`experiments/fedgan.py`) as a 2-process job on localhost (CPU backend,
gloo, 2 devices each) against the same flags in one process with 4 devices: the same
per-round losses, synthetic set and FID, and only process 0 writes the run directory.

Slow (two full runs with evaluation, ~2 minutes on 2 cores); the engine-level 2-process
test in test_multiprocess.py runs in CI."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = ["--clients", "20", "--clients-per-round", "8", "--rounds", "4", "--execution", "vmap",
         "--width", "16", "--eval-every", "0", "--checkpoint-every", "2", "--tstr-steps", "30",
         "--fid-classifier-steps", "30", "--num-synthetic", "100", "--no-progress"]
TIMEOUT_S = 400


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, devices, extra=()):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "fedgan.py"), *FLAGS,
                             "--out", str(out), *extra], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"runner failed:\n{log[-4000:]}"


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_runner_matches_one_process(tmp_path):
    port = _free_port()
    two, one = tmp_path / "two", tmp_path / "one"
    _wait([_launch(two, 2, ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                            "--process-id", str(pid)]) for pid in range(2)])
    _wait([_launch(one, 4)])

    got, want = _metrics(two), _metrics(one)
    assert [m["round"] for m in got] == [m["round"] for m in want] == [1, 2, 3, 4]
    for g, w in zip(got, want):
        np.testing.assert_allclose([g["d_loss"], g["g_loss"]], [w["d_loss"], w["g_loss"]], rtol=1e-5)
    sg, sw = np.load(two / "synthetic.npz"), np.load(one / "synthetic.npz")
    np.testing.assert_array_equal(sg["y"], sw["y"])
    assert np.abs(sg["x"].astype(int) - sw["x"].astype(int)).max() <= 1  # uint8 rounding of ~1e-6 diffs
    rg, rw = (json.loads((r / "results.json").read_text()) for r in (two, one))
    assert rg["fid"] == pytest.approx(rw["fid"], rel=1e-3)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(
        p.name for p in (one / "checkpoints").iterdir())
