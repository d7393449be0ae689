"""Loss/confidence MIA (vmapped over clients) and model inversion on overfit classifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import fit

from fedjax_gen.attacks import membership_classifier as mc
from fedjax_gen.attacks import model_inversion as mi
from fedjax_gen.attacks.metrics import roc_auc
from fedjax_gen.models import make_classifier

C, N = 2, 20  # clients, examples per client
MODEL = make_classifier("mlp", (8, 8, 1), 10, width=16)


@pytest.fixture(scope="module")
def clients(digits):
    x = jnp.asarray(digits["x_train"][: C * N].reshape(C, N, 8, 8, 1))
    y = jnp.asarray(digits["y_train"][: C * N].reshape(C, N))

    def train(key, xc, yc):  # overfit: 300 full-batch Adam steps on 20 examples
        loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(p, xc), yc))
        return fit(loss, MODEL.init(key), steps=300, lr=2e-2)

    params = jax.vmap(train)(jax.random.split(jax.random.key(0), C), x, y)
    return params, x, y


def test_loss_mia_per_client(clients, digits):
    params, x, y = clients
    xn, yn = jnp.asarray(digits["x_test"][:200]), jnp.asarray(digits["y_test"][:200])
    scores = mc.client_scores(MODEL, params, x, y, xn, yn)
    assert scores["loss_members"].shape == (C, N) and scores["loss_non"].shape == (C, 200)
    report = mc.classifier_mia_report(scores, np.ones((C, N), bool))
    assert report["loss"]["auc"] > 0.8 and report["conf"]["auc"] > 0.8
    assert report["loss"]["auc_per_client_mean"] > 0.8 and report["loss"]["yeom_advantage"] > 0.3
    # Null: client 0's model on two sets it never saw, from one distribution.
    xu, yu = jnp.asarray(digits["x_train"][200:400]), jnp.asarray(digits["y_train"][200:400])
    p0 = jax.tree.map(lambda a: a[0], params)
    su, _ = mc.example_scores(MODEL, p0, xu, yu)
    sn, _ = mc.example_scores(MODEL, p0, xn, yn)
    assert abs(roc_auc(np.asarray(su), np.asarray(sn)) - 0.5) < 0.1


def test_model_inversion(clients, digits):
    params, x, y = clients
    classes = jnp.arange(10)
    cfg = mi.InversionConfig(steps=100, lr=0.1)
    recon = mi.invert_clients(MODEL, params, classes, jax.random.key(1), image_shape=(8, 8, 1), cfg=cfg)
    assert recon.shape == (C, 10, 8, 8, 1) and float(jnp.max(jnp.abs(recon))) <= 1.0
    probs = jax.vmap(lambda p, r: jax.nn.softmax(MODEL.apply(p, r)))(params, recon)
    # Inversion reaches each class (confidently) under each client's model.
    assert float(jnp.mean(jnp.argmax(probs, -1) == classes[None])) > 0.9
    rep = mi.inversion_report(recon[0], classes, x[0], y[0], digits["x_test"][:200], digits["y_test"][:200])
    assert rep["num_classes"] >= 8
    assert all(np.isfinite(v) for v in rep.values())
    assert 0.0 <= rep["closer_to_member"] <= 1.0


def test_class_matched_non_members_separate_membership_from_label_skew(digits):
    """A model trained on classes 0 and 1 only, attacked on other 0s and 1s it never saw:
    against a shared held-out set of every class the loss MIA "detects" them (their class),
    against class-matched non-members it is at chance, as it must be. (That the matched
    view still finds real members: test_loss_mia_per_client, whose classes are balanced.)"""
    import types

    from fedjax_gen.attacks.upload_runs import classifier_mia

    y_train = np.asarray(digits["y_train"])
    two = np.flatnonzero(y_train < 2)
    seen, unseen = two[:40], two[40:100]
    x = jnp.asarray(digits["x_train"][seen])
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(p, x), y_train[seen]))
    params = jax.tree.map(lambda a: a[None], fit(loss, MODEL.init(jax.random.key(3)), steps=300, lr=2e-2))
    ds = types.SimpleNamespace(x_train=np.asarray(digits["x_train"]), y_train=y_train,
                               x_test=np.asarray(digits["x_test"]), y_test=np.asarray(digits["y_test"]))
    pool = np.arange(len(ds.y_test))
    owner = np.full(len(y_train), -1)
    owner[unseen] = 0
    report = classifier_mia(MODEL, params, np.array([0]), ds, owner, pool, num_any_class=300, seed=0)
    assert report["any_class"]["loss"]["auc"] > 0.8  # the classes, not membership
    assert abs(report["loss"]["auc"] - 0.5) < 0.15
    assert report["loss"]["num_clients"] == 1
