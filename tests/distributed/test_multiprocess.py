"""Two processes on localhost (CPU backend, gloo collectives, 2 devices each) run a few
vmap-strategy dp_fedavg_gan rounds over the global 4-device mesh; the final state equals a
single-process run with the same seed."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_mp_worker.py")
TIMEOUT_S = 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    port = _free_port()
    out = tmp_path / "state.npz"
    procs = []
    try:
        for pid in range(2):
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                   "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                   "JAX_PROCESS_ID": str(pid)}
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = []
        for p in procs:
            stdout, _ = p.communicate(timeout=TIMEOUT_S)
            logs.append(stdout)
        for p, log in zip(procs, logs):
            assert p.returncode == 0, f"worker failed:\n{log[-4000:]}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-process workers did not finish in {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    got = np.load(out)
    assert int(got["processes"]) == 2 and int(got["devices"]) == 4 and int(got["local"]) == 2
    assert int(got["padded"]) == 8  # 5 sampled clients padded to the 4-device mesh

    sys.path.insert(0, str(WORKER.parent))
    try:
        from _mp_worker import train
    finally:
        sys.path.pop(0)
    want, _ = train(None)  # one process, no mesh
    leaves = jax.tree.leaves(want)
    assert len(leaves) == len([k for k in got.files if k.startswith("arr_")])
    for i, w in enumerate(leaves):
        np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(w), rtol=2e-5, atol=2e-5)
