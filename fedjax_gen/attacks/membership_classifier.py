"""Loss / confidence threshold membership inference against classifiers (Yeom et al. 2018).

Target: models a client uploads (e.g. DENSE's per-client classifiers). For client c the
members are c's own training examples and the non-members are held-out test examples; the
attacker thresholds the per-example loss (or the confidence in the true label) of c's model.
Everything is vmapped over a leading client axis of stacked parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.models.base import Model, Params


def _float(x):
    return x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def example_scores(model: Model, params: Params, x, y):
    """One model: x [N, H, W, C], y [N] -> (loss_score [N] = -cross-entropy,
    confidence [N] = softmax probability of the true label)."""
    logits = model.apply(params, _float(x))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return -ce, jnp.exp(-ce)


@functools.partial(jax.jit, static_argnames="model")
def client_scores(model: Model, stacked_params: Params, x_members, y_members, x_non, y_non):
    """Scores of every client's model on its members and on shared non-members.

    stacked_params: params with a leading client axis [C, ...].
    x_members [C, N, H, W, C'], y_members [C, N] (padded rows are scored too: mask them on the
    host); x_non [M, H, W, C'], y_non [M] (the same held-out set for every client).
    Returns dict of [C, N] / [C, M] arrays: loss_members, loss_non, conf_members, conf_non.
    """

    def one(p, xm, ym):
        lm, cm = example_scores(model, p, xm, ym)
        ln, cn = example_scores(model, p, x_non, y_non)
        return {"loss_members": lm, "loss_non": ln, "conf_members": cm, "conf_non": cn}

    return jax.vmap(one)(stacked_params, x_members, y_members)


def yeom_threshold_advantage(loss_members, loss_non, mean_train_loss: float) -> float:
    """Yeom et al.'s fixed-threshold attack: 'member' iff loss <= the average training loss
    (which the attacker is assumed to know). Returns TPR - FPR. Inputs are losses (>= 0)."""
    return float(np.mean(np.asarray(loss_members) <= mean_train_loss)
                 - np.mean(np.asarray(loss_non) <= mean_train_loss))


def classifier_mia_report(scores: dict, mask_members) -> dict:
    """Per-client and pooled membership metrics for `client_scores` output.

    mask_members [C, N] bool: real (non-padding) member slots. The pooled report treats every
    (client model, example) pair as one trial; per-client AUCs are averaged (macro).
    """
    mask = np.asarray(mask_members, bool)
    out = {}
    for kind in ("loss", "conf"):
        sm, sn = np.asarray(scores[f"{kind}_members"]), np.asarray(scores[f"{kind}_non"])
        per_client = [mia_report(sm[c][mask[c]], sn[c]) for c in range(sm.shape[0]) if mask[c].any()]
        pooled = mia_report(sm[mask], sn.ravel())
        out[kind] = {**pooled, "auc_per_client_mean": float(np.mean([r["auc"] for r in per_client])),
                     "num_clients": len(per_client)}
        if kind == "loss":
            train_loss = float(np.mean(-sm[mask]))
            out[kind]["yeom_advantage"] = yeom_threshold_advantage(-sm[mask], -sn.ravel(), train_loss)
    return out
