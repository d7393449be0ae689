"""Shamir t-of-m sharing over F_{2^255-19}: any t shares reconstruct, fewer refuse."""

import itertools
import random

import pytest

from fedjax_gen.secure import shamir


def test_any_t_shares_reconstruct_the_secret():
    r = random.Random(0)
    secret = r.getrandbits(254)
    xs = [3, 7, 11, 12, 20]
    shares = shamir.share(secret, 3, xs, r)
    for subset in itertools.combinations(range(5), 3):
        assert shamir.reconstruct([(xs[i], shares[i]) for i in subset], 3) == secret


def test_fewer_than_t_shares_refuse():
    r = random.Random(1)
    xs = [1, 2, 3, 4]
    a = shamir.share(5, 3, xs, r)
    with pytest.raises(shamir.NotEnoughShares):
        shamir.reconstruct([(1, a[0]), (2, a[1])], 3)
    # t - 1 shares plus a wrong share give a different secret (not "close": uniform)
    assert shamir.reconstruct([(1, a[0]), (2, a[1]), (3, (a[2] + 1) % shamir.P)], 3) != 5


def test_shares_are_field_elements_of_32_bytes():
    shares = shamir.share(shamir.P - 1, 2, [1, 2, 3])
    assert all(0 <= s < shamir.P and shamir.from_bytes(shamir.to_bytes(s)) == s for s in shares)
