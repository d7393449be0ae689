"""Which conv lowering each execution gets (measured choices, benchmarks/README.md)."""

import pytest

from fedjax_gen.federated import Execution, conv_impl_for


@pytest.mark.parametrize("execution,backend,rolled,want", [
    (Execution("chunked", 1), "cpu", False, "xla"),     # one client per call, unrolled steps
    (Execution("chunked", 1), "cpu", True, "im2col"),   # conv grads in a rolled scan (DENSE)
    (Execution("chunked", 8), "cpu", False, "im2col"),  # vmapped per-client weights
    (Execution("vmap"), "cpu", False, "im2col"),
    (Execution("vmap"), "gpu", False, "xla"),
    (Execution("chunked", 1), "tpu", True, "xla"),
])
def test_conv_impl_for(execution, backend, rolled, want):
    assert conv_impl_for(execution, backend, rolled=rolled) == want
