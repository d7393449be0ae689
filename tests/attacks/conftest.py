"""Shared small data for the attack tests: 8x8 digits in [-1, 1] (numpy)."""

import numpy as np
import pytest

from fedjax_gen.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    ds = load_dataset("digits")
    f = lambda x: x.astype(np.float32) / 127.5 - 1.0
    return {"x_train": f(ds.x_train), "y_train": ds.y_train, "x_test": f(ds.x_test),
            "y_test": ds.y_test, "u8_train": ds.x_train, "u8_test": ds.x_test}


def fit(loss_fn, params, steps, lr=1e-2):
    """Full-batch Adam for `steps` in one jitted scan: loss_fn(params) -> scalar."""
    import jax
    import optax

    opt = optax.adam(lr)

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss_fn)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

    return run(params)


def config_json(method: str, options, **internal) -> dict:
    """config.json of a fabricated run, as runners/train.py writes it (config_record)."""
    from fedjax_gen.config import DataConfig, PerformanceFlags, RunConfig
    from fedjax_gen.privacy.config import PrivacyConfig
    from fedjax_gen.run_dir import config_record

    data = DataConfig(dataset="digits", clients=3, max_train=60, seed=0)
    return config_record(method, data, RunConfig(), PerformanceFlags(), PrivacyConfig(), options, **internal)
