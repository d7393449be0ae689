"""Test-wide setup: 8 forced CPU devices (sharding tests), a per-session cache dir, and one
XLA compilation cache shared by the run's workers."""

import os
import pathlib
import shutil
import tempfile

# Must happen before jax initialises its backends. Compilation dominates this suite (small shapes,
# many distinct programs); LLVM at -O1 compiles faster than the default -O2 and runs as fast here
# (measured on 2 cores: 39 engine / dct_gmm / ghost-clipping tests 183 s -> 148 s; the 3000-step
# recipe test 71 s -> 70 s). -O0 halves compile time but made training loops 9x slower.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compilation dominates this suite, and many tests build the same programs from fresh closures
# (each CLI run, each strategy), which jit's in-memory cache cannot share: JAX's persistent
# cache (keyed on the program, flags and jax version) lets a run's tests and both xdist workers
# compile each program once. The first process (the xdist controller) makes the directory and
# removes it at the end; its workers inherit it through the environment. A user's own
# JAX_COMPILATION_CACHE_DIR is used as is and kept.
_SHARED_CACHE = "FEDJAX_GEN_TEST_XLA_CACHE"
_OWNS_XLA_CACHE = _SHARED_CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWNS_XLA_CACHE:
    os.environ[_SHARED_CACHE] = tempfile.mkdtemp(prefix="fedjax_gen-xla-")
if _SHARED_CACHE in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_SHARED_CACHE]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keeps FID classifiers and decoded datasets out of the user's cache; shared by all
    tests of a session so the domain classifier trains once."""
    if "FEDJAX_GEN_CACHE" not in os.environ or os.environ.get("CI"):
        os.environ["FEDJAX_GEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


TABLE_HEADER = ("proto", "bytes", "rate", "flag", "label")


def table_rows(n: int, seed: int) -> list[list[str]]:
    """Records of a tiny labelled table: two categoricals, a heavy-tailed count, a 2-decimal
    rate, three classes that the features separate (normal, dos, probe)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = str(rng.choice(["normal", "dos", "probe"], p=[0.5, 0.3, 0.2]))
        proto = "tcp" if label == "dos" else str(rng.choice(["tcp", "udp", "icmp"]))
        count = int(rng.exponential(1000 if label == "normal" else 50))
        rate = float(rng.uniform(0.8, 1) if label == "probe" else rng.uniform(0, 1))
        rows.append([proto, str(count), f"{rate:.2f}", "x" if rng.random() < 0.5 else "y", label])
    return rows


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory):
    """(train.csv, test.csv) paths of a tiny table (600 / 200 records, a header row)."""
    import csv

    root = tmp_path_factory.mktemp("table")
    paths = []
    for name, n, seed in (("train.csv", 600, 0), ("test.csv", 200, 1)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(TABLE_HEADER)
            w.writerows(table_rows(n, seed))
        paths.append(str(root / name))
    return tuple(paths)


@pytest.fixture
def nsl_kdd_dir():
    path = SHARED_DATA / "nsl_kdd"
    if not (path / "KDDTrain+.txt.gz").exists():
        pytest.skip(f"NSL-KDD test data not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture
def mnist_dir():
    path = SHARED_DATA / "tfds"
    if not path.exists():
        pytest.skip(f"MNIST test data not found at {path} (../shared/data is absent)")
    return str(path)


def pytest_unconfigure(config):
    """The process that made the run's compilation cache (the controller) removes it."""
    if _OWNS_XLA_CACHE:
        shutil.rmtree(os.environ[_SHARED_CACHE], ignore_errors=True)
