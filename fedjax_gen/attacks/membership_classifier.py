"""Loss / confidence threshold membership inference against classifiers (Yeom et al. 2018).

Target: models a client uploads (e.g. DENSE's per-client classifiers). For client c the
members are c's own training examples and the non-members are held-out test examples; the
attacker thresholds the per-example loss (or the confidence in the true label) of c's model.
Everything is vmapped over a leading client axis of stacked parameters.

Under label skew the non-members must match each client's class counts: a model trained on
two classes has low loss on *any* example of those classes, so against a shared held-out
set the score mostly detects the client's classes (distribution inference), not membership
(attacks/upload_runs.py reports both).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_gen.attacks.metrics import mia_report
from fedjax_gen.models.base import Model, Params
from fedjax_gen.attacks.images import as_float



def example_scores(model: Model, params: Params, x, y):
    """One model: x [N, H, W, C], y [N] -> (loss_score [N] = -cross-entropy,
    confidence [N] = softmax probability of the true label)."""
    logits = model.apply(params, as_float(x))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return -ce, jnp.exp(-ce)


@functools.partial(jax.jit, static_argnames="model")
def client_scores(model: Model, stacked_params: Params, x_members, y_members, x_non, y_non):
    """Scores of every client's model on its members and on non-members.

    stacked_params: params with a leading client axis [C, ...].
    x_members [C, N, H, W, C'], y_members [C, N] (padded rows are scored too: mask them on the
    host); non-members either shared, x_non [M, H, W, C'] and y_non [M], or per client,
    x_non [C, M, H, W, C'] and y_non [C, M] (e.g. matched to each client's classes).
    Returns dict of [C, N] / [C, M] arrays: loss_members, loss_non, conf_members, conf_non.
    """

    def one(p, xm, ym, xn, yn):
        lm, cm = example_scores(model, p, xm, ym)
        ln, cn = example_scores(model, p, xn, yn)
        return {"loss_members": lm, "loss_non": ln, "conf_members": cm, "conf_non": cn}

    per_client = y_non.ndim == 2
    return jax.vmap(one, in_axes=(0, 0, 0, 0 if per_client else None, 0 if per_client else None))(
        stacked_params, x_members, y_members, x_non, y_non)


def yeom_threshold_advantage(loss_members, loss_non, mean_train_loss: float) -> float:
    """Yeom et al.'s fixed-threshold attack: 'member' iff loss <= the average training loss
    (which the attacker is assumed to know). Returns TPR - FPR. Inputs are losses (>= 0)."""
    return float(np.mean(np.asarray(loss_members) <= mean_train_loss)
                 - np.mean(np.asarray(loss_non) <= mean_train_loss))


def classifier_mia_report(scores: dict, mask_members, mask_non=None) -> dict:
    """Per-client and pooled membership metrics for `client_scores` output.

    mask_members [C, N] bool: real (non-padding) member slots; mask_non [C, M] likewise for
    per-client non-members (None: all real). The pooled report treats every (client model,
    example) pair as one trial; per-client AUCs are averaged (macro) over clients with both.
    """
    mask = np.asarray(mask_members, bool)
    non = np.ones(np.shape(scores["loss_non"]), bool) if mask_non is None else np.asarray(mask_non, bool)
    out = {}
    for kind in ("loss", "conf"):
        sm, sn = np.asarray(scores[f"{kind}_members"]), np.asarray(scores[f"{kind}_non"])
        per_client = [mia_report(sm[c][mask[c]], sn[c][non[c]]) for c in range(sm.shape[0])
                      if mask[c].any() and non[c].any()]
        pooled = mia_report(sm[mask], sn[non])
        out[kind] = {**pooled, "auc_per_client_mean": float(np.mean([r["auc"] for r in per_client])),
                     "num_clients": len(per_client)}
        if kind == "loss":
            train_loss = float(np.mean(-sm[mask]))
            out[kind]["yeom_advantage"] = yeom_threshold_advantage(-sm[mask], -sn[non], train_loss)
    return out
