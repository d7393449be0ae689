"""Topologies (flat, edges:E[:assign]), the plain two-level sum against the flat sum, its
per-level bytes against a direct count, and the topology picture's labels."""

import jax
import numpy as np
import pytest
from PIL import Image

from fedjax_gen.errors import InvalidValue
from fedjax_gen.federated import topology as tp
from fedjax_gen import viz_topology as vt


def _uploads(n=12, dim=7, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, dim)) * 3).astype(np.float32)


def test_contiguous_assignment_is_balanced_and_in_client_order():
    t = tp.parse_topology("edges:3:contiguous", 10)
    assert t.edge_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert t.spec == "edges:3:contiguous" and t.edge_sizes().tolist() == [4, 3, 3]


def test_random_assignment_is_balanced_and_follows_its_key():
    a = tp.parse_topology("edges:4", 22, jax.random.key(0))
    b = tp.parse_topology("edges:4:random", 22, jax.random.key(0))
    c = tp.parse_topology("edges:4:random", 22, jax.random.key(1))
    assert a.assign == "random" and np.array_equal(a.edge_of, b.edge_of)
    assert not np.array_equal(a.edge_of, c.edge_of)
    assert sorted(a.edge_sizes().tolist()) == [5, 5, 6, 6]
    for e in range(4):
        assert np.array_equal(a.members(e), np.flatnonzero(a.edge_of == e))


def test_flat_topology_has_no_edges():
    t = tp.parse_topology("flat", 5)
    assert t.flat and t.num_edges == 0 and t.to_dict()["edge_sizes"] == []


def test_column_assignment_keeps_a_value_on_one_edge_and_balances_clients():
    cells = np.array([7, 7, 7, 7, 3, 3, 3, 9, 9, 1, 5, 5])  # counts: 7:4, 3:3, 9:2, 5:2, 1:1
    t = tp.parse_topology("edges:3:column", len(cells), column=cells)
    for v in np.unique(cells):
        assert len(set(t.edge_of[cells == v].tolist())) == 1
    # largest first onto the least-loaded edge: 7 -> e0 (4), 3 -> e1 (3), 9 -> e2 (2), 5 -> e2 (4), 1 -> e1 (4)
    assert t.edge_sizes().tolist() == [4, 4, 4]
    assert t.edge_of[cells == 1][0] == 1 and t.edge_of[cells == 5][0] == 2


def test_majority_per_client_matches_a_loop():
    rng = np.random.default_rng(0)
    owner, values = rng.integers(0, 6, 200), rng.integers(0, 4, 200)
    owner[:6] = np.arange(6)
    got = tp.majority_per_client(values, owner, 6)
    for c in range(6):
        counts = np.bincount(values[owner == c], minlength=4)
        assert got[c] == np.argmax(counts)  # argmax: the smallest value among ties


@pytest.mark.parametrize("spec, n, column, needle", [
    ("edges:13", 12, None, "use at most edges:12"),
    ("edges:0", 12, None, "at least 1 edge"),
    ("edge:3", 12, None, "is not one of flat"),
    ("edges:x", 12, None, "is not one of flat"),
    ("edges:3:cells", 12, None, "assignment 'cells'"),
    ("edges:3:column", 12, None, "needs a per-client column"),
    ("edges:4:column", 6, np.array([1, 1, 2, 2, 3, 3]), "use edges:3:column"),
])
def test_refusals_are_one_line_naming_the_fix(spec, n, column, needle):
    with pytest.raises(InvalidValue) as err:
        tp.parse_topology(spec, n, jax.random.key(0), column=column)
    assert err.value.param == "topology" and needle in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("topology")


def test_topology_is_a_pytree_with_static_shape_fields():
    t = tp.parse_topology("edges:3:contiguous", 9)
    leaves, treedef = jax.tree.flatten(t)
    assert len(leaves) == 1 and np.array_equal(leaves[0], t.edge_of)
    u = jax.tree.unflatten(treedef, [leaves[0] + 0])
    assert u.num_edges == 3 and u.assign == "contiguous"


def test_two_level_sum_equals_the_flat_sum_exactly():
    x = _uploads(12, 7)
    t = tp.parse_topology("edges:4:random", 12, jax.random.key(2))
    present = np.ones(12, bool)
    present[[1, 6]] = False
    res = tp.two_level_sum(x, t.edge_of, 4, uploaded=present)
    flat = x[present].astype(np.float64).sum(0)
    np.testing.assert_array_equal(res.total, flat)  # float64 sums of these float32 entries are exact
    np.testing.assert_array_equal(res.contributed, present)
    for e in range(4):
        view = res.edge_view(e)
        ids = np.flatnonzero((t.edge_of == e) & present)
        assert view["sees"] == "cleartext uploads" and np.array_equal(view["devices"], ids)
        np.testing.assert_array_equal(view["uploads"], x[ids])
        np.testing.assert_array_equal(view["partial_sum"], x[ids].astype(np.float64).sum(0))
    np.testing.assert_array_equal(res.cloud_view()["edge_sums"].sum(0), res.total)


def test_an_edge_that_times_out_drops_its_devices_and_its_cloud_bytes():
    x = _uploads(12, 5, seed=1)
    t = tp.parse_topology("edges:3:contiguous", 12)
    res = tp.two_level_sum(x, t.edge_of, 3, edges_timed_out=[1])
    kept = t.edge_of != 1
    np.testing.assert_array_equal(res.total, x[kept].astype(np.float64).sum(0))
    np.testing.assert_array_equal(res.contributed, kept)
    assert res.forwarded.tolist() == [True, False, True]
    # its devices still uploaded to it: device bytes unchanged, its link to the cloud carries nothing
    assert res.bytes["device_to_edge"]["up"].tolist() == [5 * 4] * 12
    assert res.bytes["edge_to_cloud"]["up"].tolist() == [5 * 8, 0, 5 * 8]


def test_per_level_bytes_match_a_direct_count():
    x = _uploads(10, 9, seed=2)
    t = tp.parse_topology("edges:3:contiguous", 10)
    present = np.arange(10) != 4
    res = tp.two_level_sum(x, t.edge_of, 3, uploaded=present, entry_bytes=4, edge_entry_bytes=8)
    direct_devices = sum(9 * 4 for i in range(10) if present[i])
    direct_edges = 3 * 9 * 8  # each edge forwards one float64 vector
    assert res.bytes["device_to_edge"]["up_total"] == direct_devices
    assert res.bytes["edge_to_cloud"]["up_total"] == res.bytes["cloud_ingress"] == direct_edges
    assert res.bytes["device_to_edge"]["up_mean"] == direct_devices / 10


def test_cloud_ingress_for_1000_devices_under_20_edges_is_over_10x_below_flat():
    t = tp.parse_topology("edges:20:random", 1000, jax.random.key(0))
    res = tp.two_level_sum(np.ones((1000, 16), np.float32), t.edge_of, 20)
    flat_ingress = 1000 * 16 * 4  # every device's float32 upload reaches the cloud
    assert flat_ingress / res.bytes["cloud_ingress"] == 25.0  # 1000 x 4 bytes vs 20 x 8 bytes per entry
    assert res.bytes["device_to_edge"]["up_mean"] == 16 * 4  # a device sends what it sends in flat


def test_fmt_bytes():
    assert [vt.fmt_bytes(v) for v in (512, 1380, 20640, 179_960_000, 2.5e12)] == [
        "512 B", "1.38 kB", "20.6 kB", "180 MB", "2.5e+03 GB"]


def test_topology_picture_labels_every_link_with_its_bytes_and_every_observer(tmp_path):
    x = _uploads(12, 6, seed=3)
    t = tp.parse_topology("edges:12:contiguous", 12)
    res = tp.two_level_sum(x, t.edge_of, 12, edges_timed_out=[11])
    privacy = {"cloud": {"epsilon": 1.0, "unit": "example", "delta": 1e-5},
               "edge": {"epsilon": 2.5, "unit": "example", "delta": 1e-5},
               "device": {"epsilon": 1.0, "unit": "example"}}
    s = res.summary(privacy, flat_cloud_bytes=12 * 6 * 4)
    lay = vt.layout(s, max_edges=5)
    cloud_links = {ln["src"]: ln["label"] for ln in lay["links"] if ln["dst"] == "cloud"}
    assert [cloud_links[f"edge:{i}"] for i in range(4)] == [vt.fmt_bytes(48)] * 4
    # edges 4..11 folded into one node: their bytes summed, the timed-out one named
    labels = [n["label"] for n in lay["nodes"]]
    assert "8 more edges" in labels and "8 devices" in labels
    assert cloud_links["edge:4"] == f"{vt.fmt_bytes(7 * 48)} (1 timed out)"
    dev_links = [ln["label"] for ln in lay["links"] if ln["src"].startswith("devices:")]
    assert dev_links == [vt.fmt_bytes(24)] * 4 + [vt.fmt_bytes(8 * 24)]
    assert lay["panel"][2:5] == ["ε against the cloud: 1 (example level, δ 1e-05)",
                                 "ε against one edge server: 2.5 (example level, δ 1e-05)",
                                 "ε against a device: 1 (example level)"]
    assert lay["panel"][-1].endswith(f"({12 * 6 * 4 / (11 * 48):.3g}x)")
    path = tmp_path / "topology.png"
    vt.save_topology_png(path, s, max_edges=5)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= 800
