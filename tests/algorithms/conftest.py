"""Shared fixture for the one-shot algorithm tests: the first n digits split over clients."""

import numpy as np
import pytest

from fedjax_gen.data import load_dataset, pad_clients, partition


@pytest.fixture(scope="session")
def digits_clients():
    """make(n, clients, scheme) -> (padded ClientData of the first n digits, image_shape)."""
    ds = load_dataset("digits")

    def make(n: int, clients: int, scheme: str):
        idx = np.arange(n)
        parts = partition(ds.y_train[idx], clients, scheme, 0)
        return pad_clients(ds.x_train[idx], ds.y_train[idx], parts), ds.image_shape

    return make
