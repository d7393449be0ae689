"""Test-wide setup: 8 forced CPU devices (sharding tests) and a per-session cache dir."""

import os
import pathlib

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keeps FID classifiers and decoded datasets out of the user's cache; shared by all
    tests of a session so the domain classifier trains once."""
    if "FEDJAX_GEN_CACHE" not in os.environ or os.environ.get("CI"):
        os.environ["FEDJAX_GEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def mnist_dir():
    path = SHARED_DATA / "tfds"
    if not path.exists():
        pytest.skip(f"MNIST test data not found at {path} (../shared/data is absent)")
    return str(path)
