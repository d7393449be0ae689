"""Attacks on what a one-shot server received (RUN_DIR/uploads.npz), for the attack runner.

  classifier  DENSE: loss / confidence MIA (Yeom) on each uploaded client classifier; members
              are that client's own examples (membership.npz train_client), non-members are
              held-out test examples drawn to match the client's class counts ("loss",
              "conf": membership proper) and, for comparison, one shared held-out set of
              every class ("any_class": under label skew this mostly detects which classes
              the client holds)
  inversion   DENSE: class-score model inversion of each client classifier; each class's
              reconstruction vs the client's nearest member and nearest non-member of that class
              (non-members drawn to match the client's class counts, so neither set is larger)
              (attack_inversion.png)
  distilled   DOSFL: the uploaded distilled images vs their owner's private examples, against
              class-matched non-members (and "any_class", as for classifier)

The functions below take the rebuilt dataset and membership.npz arrays and return a JSON-able
report (plus, for inversion, the reconstructions for a grid); the registered attacks at the
end wire them to an opened run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks import distilled_match, membership_classifier, model_inversion
from fedjax_gen.attacks.images import grid_rows
from fedjax_gen.attacks.registry import register_attack
from fedjax_gen.config import option, validated
from fedjax_gen.errors import UserError
from fedjax_gen.methods.uploads import read_tree_uploads


@validated
class ClientSettings:
    max_clients: int = option(50, "classifier/inversion/distilled/merf_*: attack at most this many clients' "
                              "uploads", min=1)


@validated
class InversionSettings(ClientSettings):
    inversion_clients: int = option(10, "inversion: clients inverted", min=1)
    inversion_steps: int = option(300, "inversion: Adam steps per class", min=1)


def dense_classifiers(t, max_clients: int):
    """(model, stacked params [C, ...], client ids [C]) of the run's first max_clients uploads."""
    model = t.config.classifier("im2col")  # vmapped over per-client weights
    arrays = t.uploads()
    template = jax.eval_shape(model.init, jax.random.key(0))
    params = read_tree_uploads(arrays, template, under="params")
    n = min(max_clients, len(arrays["client_ids"]))
    return model, jax.tree.map(lambda a: jnp.asarray(a[:n]), params), arrays["client_ids"][:n]


def _padded(idx_lists):
    """Ragged index lists -> (idx [C, N] padded with the row's first index or 0, mask [C, N])."""
    n = max(1, max(len(i) for i in idx_lists))
    idx = np.stack([np.pad(i, (0, n - len(i)), constant_values=i[0] if len(i) else 0) for i in idx_lists])
    return idx, np.arange(n)[None, :] < np.array([len(i) for i in idx_lists])[:, None]


def _members_of(owner, client_ids):
    return [np.flatnonzero(owner == c) for c in client_ids]


def classifier_mia(model, params, client_ids, dataset, owner, nonmembers, num_any_class: int, seed: int) -> dict:
    """Yeom loss / confidence MIA, pooled over (client model, example) pairs: non-members
    class-matched per client from the pool `nonmembers` (the report's loss / conf), and the
    first `num_any_class` of the pool shared by every client (any_class)."""
    members = _members_of(owner, client_ids)
    idx, mask = _padded(members)
    if not mask.any():
        return {"skipped": "the attacked clients hold no training examples"}
    xm, ym = dataset.x_train[idx], dataset.y_train[idx]
    non_idx, non_mask = _matched_padded(members, dataset, nonmembers, seed)
    report = membership_classifier.classifier_mia_report(membership_classifier.client_scores(
        model, params, xm, ym, dataset.x_test[non_idx], dataset.y_test[non_idx]), mask, non_mask)
    shared = nonmembers[:num_any_class]
    report["any_class"] = membership_classifier.classifier_mia_report(membership_classifier.client_scores(
        model, params, xm, ym, dataset.x_test[shared], dataset.y_test[shared]), mask)
    return report


def matched_nonmembers(rng, y_members, y_pool, pool_idx):
    """As many non-members of each class as the members have (fewer if the pool runs out)."""
    out = [rng.choice(pool_idx[y_pool[pool_idx] == c], min(n, int(np.sum(y_pool[pool_idx] == c))), replace=False)
           for c, n in zip(*np.unique(y_members, return_counts=True))]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _matched_padded(members, dataset, nonmembers, seed: int):
    """Per client, class-matched non-members (test indices) from the pool: padded (idx [C, M], mask [C, M])."""
    rng = np.random.default_rng(seed)
    return _padded([matched_nonmembers(rng, dataset.y_train[m], dataset.y_test, nonmembers) for m in members])


def inversion(model, params, client_ids, dataset, owner, nonmembers, key, steps: int, seed: int):
    """(report averaged over clients, reconstructions [C, K, H, W, Ch] in [-1, 1])."""
    classes = jnp.arange(dataset.num_classes)
    recon = np.asarray(model_inversion.invert_clients(
        model, params, classes, key, image_shape=dataset.image_shape,
        cfg=model_inversion.InversionConfig(steps=steps)))
    rng = np.random.default_rng(seed)
    reports = []
    for i, mi in enumerate(_members_of(owner, client_ids)):
        ni = matched_nonmembers(rng, dataset.y_train[mi], dataset.y_test, nonmembers)
        if len(mi) and len(ni):
            reports.append(model_inversion.inversion_report(
                recon[i], classes, dataset.x_train[mi], dataset.y_train[mi], dataset.x_test[ni], dataset.y_test[ni]))
    reports = [r for r in reports if r["num_classes"] > 0]
    if not reports:
        return {"skipped": "no attacked client shares a class with the non-members"}, recon
    keys = [k for k in reports[0] if k != "num_classes"]
    return {**{k: float(np.mean([r[k] for r in reports])) for k in keys}, "num_clients": len(reports),
            "num_client_classes": int(sum(r["num_classes"] for r in reports)), "steps": steps}, recon


def distilled(up: dict, dataset, owner, nonmembers, max_clients: int, seed: int) -> dict:
    """DOSFL: nearest-neighbour report of each attacked client's uploaded images (up: uploads.npz),
    against class-matched non-members (any_class: the first n_c of one shared held-out set)."""
    if "owner" not in up or "x" not in up:
        raise UserError("uploads.npz is not a DOSFL upload file (no x / owner): rerun the experiment")
    client_ids = np.unique(up["owner"])[:max_clients]
    if not len(client_ids):
        return {"skipped": "uploads.npz holds no images"}
    d_idx, d_mask = _padded([np.flatnonzero(up["owner"] == c) for c in client_ids])
    members = _members_of(owner, client_ids)
    m_idx, m_mask = _padded(members)
    if len(nonmembers) < m_mask.shape[1]:
        raise UserError(f"distilled: {len(nonmembers)} non-members, but a client holds {m_mask.shape[1]} examples")
    n_idx, n_mask = _matched_padded(members, dataset, nonmembers, seed)
    x_up, x_members = up["x"][d_idx], dataset.x_train[m_idx]
    report = distilled_match.distilled_report(x_up, x_members, m_mask, dataset.x_test[n_idx], distilled_mask=d_mask,
                                              nonmember_mask=n_mask)
    report["any_class"] = distilled_match.distilled_report(x_up, x_members, m_mask, dataset.x_test[nonmembers],
                                                           distilled_mask=d_mask)
    return {**report, "num_clients": len(client_ids)}


def _pool(ctx):
    """The run's held-out examples in the seed's order: the non-member pool."""
    return np.random.default_rng(ctx.seed).permutation(ctx.target.membership["nonmembers"])


@register_attack("classifier", applies_to={"dense"}, needs=("uploads",), settings=ClientSettings, adversary="server",
                 view="uploads")
def classifier(ctx, s: ClientSettings, key):
    """Loss / confidence MIA on the uploaded client classifiers."""
    t = ctx.target
    model, params, ids = dense_classifiers(t, s.max_clients)
    return classifier_mia(model, params, ids, t.dataset, t.membership["train_client"], _pool(ctx),
                          num_any_class=ctx.num_queries, seed=ctx.seed)


@register_attack("inversion", applies_to={"dense"}, needs=("uploads",), settings=InversionSettings, adversary="server",
                 view="uploads")
def inversion_attack(ctx, s: InversionSettings, key):
    """Model inversion of the uploaded client classifiers (attack_inversion.png)."""
    t = ctx.target
    model, params, ids = dense_classifiers(t, s.max_clients)
    n = min(s.inversion_clients, len(ids))
    report, recon = inversion(model, jax.tree.map(lambda a: a[:n], params), ids[:n], t.dataset,
                              t.membership["train_client"], _pool(ctx), key, s.inversion_steps, ctx.seed)
    ctx.save_grid("attack_inversion.png", grid_rows(*recon[:8], cols=recon.shape[1]))
    return report


@register_attack("distilled", applies_to={"dosfl"}, needs=("uploads",), settings=ClientSettings, adversary="server",
                 view="uploads")
def distilled_attack(ctx, s: ClientSettings, key):
    """Uploaded distilled images vs their owner's private examples."""
    t = ctx.target
    return distilled(t.uploads(), t.dataset, t.membership["train_client"], _pool(ctx), s.max_clients, ctx.seed)
