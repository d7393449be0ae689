"""Poisson subsampling of one client's padded examples: the sampling the accountant analyses.

`accounting` composes PoissonSampledDpEvent(q, Gaussian(sigma)) under add/remove-one: every
example enters a step's batch independently with probability q. `algorithms.common.sample_batch` instead
draws a fixed-size batch without replacement; dp-accounting analyses that only under the
replace-one relation (SampledWithoutReplacementDpEvent, RDP only), whose epsilons are not
comparable with the add/remove ones every other runner reports (replace-one is roughly
twice add/remove). So the DP paths of the one-shot baselines (DOSFL, DENSE) sample with
Poisson, exactly the analysed mechanism.

A Poisson batch has no fixed size, and truncating it to a buffer would break the analysis.
`poisson_batch` therefore masks all N padded slots (cheap where the per-slot work is a
forward pass: DOSFL's embeddings). `poisson_sum` gathers the sampled examples and runs a
per-example sum over fixed buffers of B slots, as many buffers as the sample needs
(ceil(K / B), a while loop): every sampled example counts, and a step costs ~B slots
instead of N (DENSE's DP-SGD on a 523-slot bucket at b = 32: ~10x fewer slots).

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


def poisson_buffer(batch_size: int) -> int:
    """Slots per buffer of `poisson_sum`: K ~ Binomial(n, b / n) has mean <= b and std <= sqrt(b),
    so 1.5 b (+ 2) holds the sample in one buffer all but rarely (b = 32: K > 50 with
    probability ~1e-3); a larger sample runs a second buffer, it is never cut."""
    return batch_size + batch_size // 2 + 2


def poisson_sum(example_sum, client, key, batch_size: int, buffer_size: int | None = None,
                buffer_multiple: int = 1):
    """sum over one Poisson sample (the same sample as `poisson_batch(client, key, b)`) of
    example_sum(x [B, H, W, C] float, y [B], mask [B]) -> pytree, a function additive over
    examples whose masked slots contribute 0 (e.g. a clipped per-example gradient sum).

    The sampled examples are gathered, in slot order, into buffers of B = min(buffer_size,
    N) slots, rounded up to a multiple of `buffer_multiple` (a microbatch size); example_sum runs on ceil(K / B) buffers (K the sample size; none when K = 0)
    and the results are added. Returns (sum, q []). Equal to example_sum on the whole
    masked client up to float summation order; safe under vmap (a vmapped while loop
    runs every client to the longest one's count, masking the rest)."""
    n_slots = client.mask.shape[0]
    size = min(buffer_size or poisson_buffer(batch_size), n_slots)
    size = -(-size // buffer_multiple) * buffer_multiple
    q = poisson_rate(jnp.sum(client.mask), batch_size)
    take = client.mask & (jax.random.uniform(key, client.mask.shape) < q)  # poisson_batch's draw
    count = jnp.sum(take)
    order = jnp.argsort(~take, stable=True)  # sampled slots first
    order = jnp.concatenate([order, jnp.zeros(-n_slots % size, order.dtype)])

    def buffer_sum(i):
        start = i * size
        idx = jax.lax.dynamic_slice_in_dim(order, start, size)
        valid = start + jnp.arange(size) < count
        return example_sum(to_float(client.x[idx]), client.y[idx], valid)

    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(buffer_sum, 0))
    total = jax.lax.fori_loop(0, (count + size - 1) // size,
                              lambda i, acc: jax.tree.map(jnp.add, acc, buffer_sum(i)), zero)
    return total, q
