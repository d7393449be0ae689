"""The whole runner (`experiments/fedgan.py`) as a 2-process job on localhost (CPU backend,
gloo) against the same flags in one process with 4 devices: the same per-round losses,
synthetic set, FID and checkpoints. Launched two ways: with --coordinator-address/
--num-processes/--process-id flags, and through scripts/slurm_multinode_gpu.sbatch itself
with stand-ins for srun/scontrol that start its tasks on localhost.

Slow (full runs with evaluation, ~1 minute each on 2 cores); the engine-level 2-process
test in test_multiprocess.py runs in CI."""

import json
import os
import pathlib
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = ["--dataset", "digits", "--model", "mlp", "--partition", "iid","--clients", "20", "--clients-per-round", "8", "--rounds", "4", "--execution", "vmap",
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


def _compare(two, one):
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


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    one = tmp_path_factory.mktemp("one") / "run"
    _wait([_launch(one, 4)])
    return one


@pytest.mark.slow
def test_two_process_runner_matches_one_process(tmp_path, one_process):
    port = _free_port()
    two = tmp_path / "two"
    _wait([_launch(two, 2, ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                            "--process-id", str(pid)]) for pid in range(2)])
    _compare(two, one_process)


_SRUN = """#!/bin/bash
# srun stand-in: starts SLURM_NTASKS copies of the command on this host, SLURM_PROCID=i.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""
_SCONTROL = """#!/bin/bash
echo 127.0.0.1   # scontrol show hostnames: the first node hosts the coordinator
"""


@pytest.mark.slow
def test_slurm_launcher_runs_two_tasks_on_localhost(tmp_path, one_process):
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", _SRUN), ("scontrol", _SCONTROL)):
        (shims / name).write_text(text)
        (shims / name).chmod((shims / name).stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "slurm"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "1", "COORD_PORT": str(_free_port()),
           "OUT": str(out)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_multinode_gpu.sbatch"), *FLAGS],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _compare(out, one_process)
