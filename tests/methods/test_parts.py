"""A method's parts on their own (methods/base.py, methods/aggregators.py): each aggregator's
byte count against a direct count of what goes on the wire, the Release's accounting against
dp-accounting, its refusals, Rounds' shape rules, presets on the methods, and the driver and
the comparison grid naming no method."""

import dataclasses
import math
import pathlib
import re

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import methods
from fedjax_gen.compare import grid
from fedjax_gen.config import PerformanceFlags, RunConfig
from fedjax_gen.data import load_dataset
from fedjax_gen.errors import InvalidValue, UnreachableBudget
from fedjax_gen.federated import FederatedAlgorithm, default_execution
from fedjax_gen.data import ClientData
from fedjax_gen.federated.algorithm import ClientOutput
from fedjax_gen.federated.compression import UPLINK_BYTES, Compression
from fedjax_gen.methods import aggregators
from fedjax_gen.methods.base import Built, Release, Rounds, Synthesizer
from fedjax_gen.privacy.config import Mechanism, PrivacyConfig, plan_for
from fedjax_gen.secure import secagg, shamir

ROOT = pathlib.Path(__file__).resolve().parents[2] / "fedjax_gen"


def _algorithm(shapes=(("a", (5, 7)), ("b", (3,)))):
    """A summed round whose client uploads float leaves of `shapes` (ones x its example count)."""
    def client_update(message, client, key):
        n = jnp.sum(client.mask).astype(jnp.float32)
        return ClientOutput({k: jnp.ones(s) * n for k, s in shapes}, n, {})

    return FederatedAlgorithm("ones", lambda key: jnp.zeros(()), lambda state: state, client_update,
                              lambda state, summed, num_sampled, key: (state, {}))


def _client(n=4):
    return ClientData(np.zeros((n, 8, 8, 1), np.uint8), np.zeros(n, np.int32), np.ones(n, bool), np.int32(n))


# --- aggregators: bytes against a direct count ---------------------------------------------


def test_plain_passes_the_engine_payload_or_counts_its_own():
    plain = aggregators.Plain()
    assert plain.engine(0, "stack") == ("stack", None)
    assert plain.traffic(1200, 300, [], None) == {"bytes_up": 1200, "bytes_down": 300, "bytes_up_uncompressed": 1200}
    own = aggregators.Plain(count=lambda state: 4 * int(np.sum(state["valid"])) * 64)  # 4 valid 8x8 images
    state = {"valid": np.array([[1, 1, 0], [1, 1, 0]], bool)}
    assert own.traffic(99999, 300, [], state) == {"bytes_up": 1024, "bytes_down": 300, "bytes_up_uncompressed": 1024}
    assert own.refusal(Compression("quantize", bits=8), 1, "m").param == "uplink"
    assert own.refusal(Compression(), 4, "m") is None and plain.refusal(Compression("quantize", bits=8), 4, "m") is None
    ids, outs, extra = plain.server_view(3, None)  # read from the state (stacked methods)
    assert ids.tolist() == [0, 1, 2] and outs is None and extra == {}


def test_compressed_counts_what_its_clients_sent():
    q8 = Compression("quantize", bits=8)
    agg = aggregators.compressed(aggregators.Plain(), q8, cohort=4)
    assert aggregators.compressed(aggregators.Plain(), Compression(), 4) == aggregators.Plain()
    out = agg.uplink(_algorithm(), None).client_update(None, _client(), jax.random.key(0))
    # per leaf: ceil(n * 8 / 8) packed codes + float32 min and step; the weight raw
    direct = (35 + 8) + (3 + 8) + 4
    assert float(out.metrics[UPLINK_BYTES]) == direct
    records = [{"round": 1, UPLINK_BYTES: float(out.metrics[UPLINK_BYTES])}, {"round": 2, UPLINK_BYTES: 50.5}]
    t = agg.traffic(2 * 4 * (38 * 4 + 4), 100, records, None)
    assert t == {"bytes_up": 4 * direct + 4 * 50.5, "bytes_down": 100, "bytes_up_uncompressed": 2 * 4 * 156}
    ef = Compression("topk", fraction=0.25, error_feedback=True)
    view = aggregators.compressed(aggregators.Plain(), ef, 4).uplink(_algorithm(), None, view=True)
    assert not view.stateful_clients  # round 1's uploads: plain top-k (no residual yet)


def _merf_secagg(digits, n=6, dim_features=8):
    from fedjax_gen.methods.dp_merf import MERFOptions

    opts = MERFOptions(num_features=dim_features, secure_aggregation="secagg")
    ctx = methods.BuildContext(digits, np.full(n, 30), opts, PrivacyConfig(), PerformanceFlags(), RunConfig(),
                               default_execution("mlp"))
    return methods.get("dp_merf").build(ctx)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_secure_counts_the_protocols_bytes(digits):
    """keys, encrypted shares, masked b-bit uploads and unmasking shares, from the protocol's
    message sizes (SecAgg, complete graph: k = n - 1 neighbours)."""
    n, D = 6, 8
    built = _merf_secagg(digits, n, D)
    agg = built.aggregator
    assert isinstance(agg, aggregators.Secure) and built.release.accounting is agg.secure
    C = digits.num_classes
    rng = np.random.default_rng(0)
    out = ClientOutput({"embedding": rng.uniform(-1, 1, (n, C, D)).astype(np.float32),
                        "counts": rng.integers(0, 4, (n, C)).astype(np.float32)}, np.ones(n, np.float32), {})
    reduce, aggregate = agg.engine(0, built.rounds.reduce)
    assert reduce == "host"
    records = [{"round": r + 1, **aggregate(out, np.ones(n, bool), np.arange(n), jax.random.key(r))[1]}
               for r in range(2)]
    dim, k = C * (D + 1), n - 1
    share = secagg.ID_BYTES + secagg.NONCE_BYTES + secagg.SHARE_PLAINTEXT_BYTES + secagg.TAG_BYTES
    per_client = (2 * secagg.PUBLIC_KEY_BYTES + k * share + math.ceil(dim * 32 / 8)
                  + (k + 1) * (secagg.ID_BYTES + shamir.SHARE_BYTES))
    t = agg.traffic(777, 55, records, None)
    assert t == {"bytes_up": 2 * n * per_client, "bytes_down": 55, "bytes_up_uncompressed": 777}
    ids, decoded, extra = agg.server_view(3, None)  # the server's view: masked integers
    assert ids.tolist() == [0, 1, 2] and extra["masked"].shape == (3, dim)
    assert decoded.upload["embedding"].shape == (3, C, D)
    assert agg.results()["secure_aggregation"]["rounds"] == 2
    assert agg.refusal(Compression("quantize", bits=8), 1, "dp_merf").param == "uplink"
    assert agg.refusal(Compression(), 2, "dp_merf").param == "rounds_per_call"
    with pytest.raises(ValueError):
        agg.engine(0, "stack")


# --- the release ------------------------------------------------------------------------


def _user_release(z=1.2, rounds=5, clients=20, cohort=4, **privacy):
    mechanism = Mechanism("m", ("user",), rounds=rounds, clients_per_round=cohort, steps_param="rounds")
    p = PrivacyConfig(unit="user", clip=0.5, **({"noise_multiplier": z} if not privacy else privacy))
    return Release(plan_for(p, mechanism, np.full(clients, 10)), mechanism), p


def test_release_accounts_the_poisson_gaussian_as_dp_accounting():
    release, p = _user_release()
    block = release.report(p, 5)
    event = dp_accounting.PoissonSampledDpEvent(4 / 20, dp_accounting.GaussianDpEvent(1.2))
    ref = [dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(event, r))
           .get_epsilon(block["delta_accountant"]) for r in range(1, 6)]
    assert block["epsilon"] == pytest.approx(ref[-1], rel=1e-9) and block["privacy_unit"] == "user"
    np.testing.assert_allclose(release.schedule(5), ref, rtol=1e-9)  # one epsilon per engine round
    assert block["noise_std"] == pytest.approx(1.2 * 0.5) and block["noise_source"].startswith("seeded")
    assert release.record() == {"noise_multiplier": 1.2, "target_epsilon": None}
    assert "user-level, noise multiplier 1.2" in release.line(p, 5)
    assert release.round_sampling["client_sampling"] == "poisson"
    none = Release()
    assert none.report(PrivacyConfig(), 3) == {"privacy_unit": None, "epsilon": None}
    assert none.schedule(3) is None and none.line(PrivacyConfig(), 3) is None and none.round_sampling == {}


def test_a_resumed_release_keeps_its_budget():
    release, _ = _user_release(epsilon=4.0)
    spent = release.plan.report(5)["epsilon"]
    kept = release.resumed(4.0, 5)
    assert kept.plan.target_epsilon == 4.0 and kept.plan.noise_multiplier == release.plan.noise_multiplier
    with pytest.raises(UnreachableBudget, match="5 rounds would spend"):
        release.resumed(spent * 0.9, 5)
    assert Release().resumed(1.0, 5) == Release()


def test_compression_is_refused_where_the_servers_noise_needs_the_clip():
    release, _ = _user_release()
    q8 = Compression("quantize", bits=8)
    assert release.uplink_refusal(q8, "m").param == "uplink" and release.uplink_refusal(Compression(), "m") is None
    client_side = dataclasses.replace(release, mechanism=dataclasses.replace(release.mechanism, client_side_noise=True))
    assert client_side.uplink_refusal(q8, "m") is None and Release().uplink_refusal(q8, "m") is None


def test_skellam_accounting_replaces_the_gaussian_in_the_release(digits):
    from fedjax_gen.methods.dp_merf import MERFOptions

    p = PrivacyConfig(unit="example", epsilon=1.0)
    ctx = methods.BuildContext(digits, np.full(6, 30), MERFOptions(num_features=8, secure_aggregation="secagg"), p,
                               PerformanceFlags(), RunConfig(), default_execution("mlp"))
    release = methods.get("dp_merf").build(ctx).release
    secure = release.accounting
    block = release.report(p, 1)
    gaussian = release.plan.report(1)["epsilon"]
    assert block["epsilon"] == float(secure.epsilons(1)[-1]) <= 1.0 + 1e-9
    assert block["noise_multiplier"] is None and block["gaussian_epsilon"] == gaussian
    assert block["secure_aggregation"] is True and block["noise_source"].startswith("seeded")
    assert release.schedule(1).tolist() == secure.epsilons(1).tolist()
    assert "distributed Skellam noise" in release.line(p, 1)


# --- rounds, synthesizer, Built ---------------------------------------------------------------


def test_rounds_take_one_algorithm_or_one_per_round():
    a = _algorithm()
    assert Rounds(a).algorithms == (a,) and not Rounds(a, 3).distinct
    assert Rounds((a, a, a), 3).distinct and Rounds([a, a], 2).first is a
    with pytest.raises(ValueError, match="one per round"):
        Rounds((a, a), 3)
    with pytest.raises(ValueError, match="reduce"):
        Rounds(a, reduce="host")  # a host step is the aggregator's


def test_built_has_at_most_nine_parts():
    assert len(dataclasses.fields(Built)) <= 9
    draw = lambda state, n, key: (np.zeros((n, 1)), np.zeros(n, np.int32))  # noqa: E731
    b = Built(Rounds(_algorithm()), draw, None)
    assert isinstance(b.synthesize, Synthesizer) and b.synthesize.labels is None and b.synthesize(None, 2, None)[0].shape == (2, 1)
    assert b.aggregator == aggregators.Plain() and b.release == Release()


# --- presets and the comparison's unit live on the methods -------------------------------------


def test_every_method_has_a_preset_per_scale_and_a_missing_one_is_refused(monkeypatch):
    for name in ("dct_gmm", "dense", "dosfl", "dp_fedavg_gan", "dp_merf", "fedgan"):
        m = methods.get(name)
        for scale in grid.SCALES:
            m.Options(**m.preset(scale))  # valid options
    gan = methods.get("dp_fedavg_gan")
    assert gan.preset("full")["model"] == "dcgan" and gan.preset("full", table=True)["model"] == "mlp"
    monkeypatch.setattr(type(gan), "presets", {"tiny": {}})
    with pytest.raises(InvalidValue, match="no 'full' preset"):
        gan.preset("full")


def test_the_grid_takes_each_methods_preset_and_comparison_unit():
    cell = grid.Cell("dp_fedavg_gan", "iid", 1.0, 0)
    job = grid.job_for(cell, "/nonexistent", "digits", 10, "tiny")
    assert job.options.rounds == 2 and job.privacy.unit == "user" and job.privacy.clip == 0.5
    job = grid.job_for(grid.Cell("dp_merf", "iid", 1.0, 0), "/nonexistent", "digits", 10, "tiny")
    assert job.options.num_features == 64 and job.privacy.unit == "example" and job.privacy.clip == 1.0


@pytest.mark.parametrize("path", ["runners/train.py", "compare/grid.py"])
def test_the_driver_and_the_grid_name_no_method(path):
    source = (ROOT / path).read_text()
    named = [m for m in ("dct_gmm", "dense", "dosfl", "dp_fedavg_gan", "dp_merf", "fedgan")
             if re.search(rf"\b{m}\b", source)]
    assert named == [] and "secure_sum" not in source
