"""The padded capacity of a Poisson-sampled cohort, and what its overflow costs in delta.

A Poisson cohort (each of N clients independently with probability q) has a random size;
the engine runs it in a fixed number of slots (static shapes) and, in the rare round whose
cohort is larger, keeps the `capacity` lowest ids (federated/engine.py). That truncated
mechanism M' equals the analysed Poisson mechanism M except on the overflow event E, whose
probability in one round is at most beta = P[Binomial(N + 1, q) > capacity] (N + 1: the
add-one neighbour has one more client), so over R rounds the two runs differ in total
variation by at most R * beta on either of two neighbouring populations. If M is
(eps, delta)-DP then for every output set S
    P[M'(D) in S] <= P[M(D) in S] + R beta <= e^eps P[M(D') in S] + delta + R beta
                  <= e^eps P[M'(D') in S] + delta + (1 + e^eps) R beta,
i.e. M' is (eps, delta + (1 + e^eps) R beta)-DP. The plan charges that term to delta and
sizes the capacity so it is a small share of the target delta.
"""

from __future__ import annotations

import math

from scipy.stats import binom


def overflow_probability(num_clients: int, rate: float, capacity: int) -> float:
    """beta = P[Binomial(N + 1, q) > capacity]: one round's chance that a Poisson cohort of
    the population or of its add-one neighbour does not fit (exact binomial tail)."""
    if rate <= 0.0 or capacity >= num_clients + 1:
        return 0.0
    return float(binom.sf(capacity, num_clients + 1, rate))


def poisson_capacity(num_clients: int, rate: float, max_overflow_probability: float) -> int:
    """Smallest c with overflow_probability(N, q, c) <= max_overflow_probability. c = N + 1
    never overflows on either neighbour; the engine runs min(c, N) slots, the same mechanism
    on a population of N (it cannot sample more than N)."""
    if rate >= 1.0:
        return int(num_clients)
    c = int(math.floor(rate * (num_clients + 1)))
    while c <= num_clients and overflow_probability(num_clients, rate, c) > max_overflow_probability:
        c += 1
    return c


def overflow_delta(epsilon: float, rounds: int, beta: float) -> float:
    """The delta a truncated Poisson run adds over `rounds` rounds: (1 + e^eps) R beta."""
    if beta == 0.0 or rounds == 0:
        return 0.0
    if math.isinf(epsilon) or epsilon > 700:
        return math.inf
    return (1.0 + math.exp(epsilon)) * rounds * beta


def capacity_for_delta(num_clients: int, rate: float, rounds: int, epsilon: float, delta_share: float) -> int:
    """Smallest capacity whose overflow_delta over `rounds` at `epsilon` is <= delta_share."""
    if math.isinf(epsilon) or epsilon > 700:
        return int(num_clients) + 1
    return poisson_capacity(num_clients, rate, delta_share / ((1.0 + math.exp(epsilon)) * max(rounds, 1)))
