"""Poisson subsampling of one client's padded examples: the sampling the accountant analyses.

`accounting` composes PoissonSampledDpEvent(q, Gaussian(sigma)) under add/remove-one: every
example enters a step's batch independently with probability q. `gan.sample_batch` instead
draws a fixed-size batch without replacement; dp-accounting analyses that only under the
replace-one relation (SampledWithoutReplacementDpEvent, RDP only), whose epsilons are not
comparable with the add/remove ones every other runner reports (replace-one is roughly
twice add/remove). So the DP paths of the one-shot baselines (DOSFL, DENSE) sample with
Poisson, exactly the analysed mechanism. The price: a step runs all N padded slots (the
unsampled masked out) instead of b, since a Poisson batch has no fixed size (truncating it
to a buffer would break the analysis).

Client c samples at q_c = min(1, b / n_c): the expected batch is b (n_c when n_c < b).
Like `plan.py` we treat the client sizes n_c as public metadata; the accountant charges
every client the worst (largest) rate, that of the smallest client.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_gen.data.client_data import to_float


def poisson_rate(num_examples, batch_size: int):
    """q = min(1, b / n) (float32 []; 1 for an empty client, which has nothing to sample)."""
    n = jnp.asarray(num_examples, jnp.float32)
    return jnp.minimum(1.0, batch_size / jnp.maximum(n, 1.0))


def poisson_batch(client, key, batch_size: int):
    """Each real example of one client independently with probability q = min(1, b / n).

    client: ClientData leaves without client axis (x [N, H, W, C] uint8, y [N], mask [N]).
    Returns x [N, H, W, C] float in [-1, 1], y [N], mask [N] (real and sampled), and q [].
    E[sum(mask)] = q n = min(b, n), the public denominator of a DP-SGD mean.
    """
    q = poisson_rate(jnp.sum(client.mask), batch_size)
    take = jax.random.uniform(key, client.mask.shape) < q
    return to_float(client.x), client.y, client.mask & take, q
