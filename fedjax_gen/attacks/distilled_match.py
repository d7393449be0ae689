"""Do uploaded distilled images (DOSFL) leak their client's private examples?

Two views, both from chunked nearest-neighbour distances (`nearest`):
  * per distilled image: distance to the nearest member d_m vs. the nearest non-member d_n.
    `closer_to_member` = P(d_m < d_n); `auc` = AUC of -d_m vs -d_n across distilled images
    (0.5 when the distilled set is no closer to members than to held-out data). d_n uses as
    many non-members as the client has members (the first n_c), since a nearest neighbour in
    a larger set is closer by chance alone.
    Best-match MSE / PSNR / SSIM quantify how much of the nearest member is visible.
  * per private example (an MIA, as full black-box GAN-Leaks with the distilled images as
    the "generated" set): score = -min distance to the client's distilled images; members vs
    non-members -> AUC / TPR@FPR.
Vmapped over clients: distilled [C, M, ...] and padded members [C, N, ...], each with an
optional mask (clients upload different numbers of images). Non-members are shared [K, ...]
or per client [C, K, ...] with a mask; under label skew they must be per client and
matched to its class counts, or both views mostly detect which classes the client holds
(its distilled images are of those classes), not membership.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.attacks.metrics import mia_report, psnr, roc_auc, ssim
from fedjax_gen.attacks.nearest import min_sq_distances
from fedjax_gen.attacks.images import as_float



@functools.partial(jax.jit, static_argnames=("chunk",))
def client_distances(distilled, members, member_mask, nonmembers, chunk: int = 1024, distilled_mask=None,
                     nonmember_mask=None):
    """distilled [C, M, H, W, Ch] ([-1, 1] floats or uint8), padded with distilled_mask [C, M]
    (None: all real; padded rows get distances too: mask them on the host); members [C, N, ...]
    padded with member_mask [C, N]; nonmembers [K, ...] shared, K >= N (each client's d_non
    uses the first n_c), or per client [C, K, ...] padded with nonmember_mask [C, K]. Returns
    dict of:
      d_member [C, M], idx_member [C, M]   distilled -> nearest real member
      d_non [C, M], idx_non [C, M]         distilled -> nearest non-member
      mia_member [C, N], mia_non [C, K]    private/held-out example -> nearest distilled image
    (squared L2 on the [-1, 1] scale)."""

    if distilled_mask is None:
        distilled_mask = jnp.ones(distilled.shape[:2], bool)
    per_client = nonmember_mask is not None

    def one(dist, dmask, mem, mask, non, nmask):
        dist = as_float(dist)
        dm, im = min_sq_distances(dist, mem, r_mask=mask, q_chunk=chunk, g_chunk=chunk)
        if not per_client:
            nmask = jnp.arange(non.shape[0]) < jnp.sum(mask)  # as many as the client's members
        dn, i_n = min_sq_distances(dist, non, r_mask=nmask, q_chunk=chunk, g_chunk=chunk)
        mm, _ = min_sq_distances(mem, dist, r_mask=dmask, q_chunk=chunk, g_chunk=chunk)
        mn, _ = min_sq_distances(non, dist, r_mask=dmask, q_chunk=chunk, g_chunk=chunk)
        return {"d_member": dm, "idx_member": im, "d_non": dn, "idx_non": i_n,
                "mia_member": mm, "mia_non": mn}

    axis = 0 if per_client else None
    return jax.vmap(one, in_axes=(0, 0, 0, 0, axis, axis))(
        distilled, distilled_mask, members, member_mask, nonmembers, nonmember_mask)


def distilled_report(distilled, members, member_mask, nonmembers, distilled_mask=None,
                     nonmember_mask=None) -> dict:
    """Host-side summary of `client_distances` pooled over clients (real distilled rows, real
    members and non-members only)."""
    mask = np.asarray(member_mask, bool)
    dmask = np.ones(np.shape(distilled)[:2], bool) if distilled_mask is None else np.asarray(distilled_mask, bool)
    if nonmember_mask is None and len(nonmembers) < mask.shape[1]:
        raise ValueError(f"need >= {mask.shape[1]} non-members (as many as a client's members)")
    d = jax.tree.map(np.asarray, client_distances(distilled, members, mask, nonmembers, distilled_mask=dmask,
                                                  nonmember_mask=nonmember_mask))
    mia_non = d["mia_non"].ravel() if nonmember_mask is None else d["mia_non"][np.asarray(nonmember_mask, bool)]
    dist = np.asarray(as_float(jnp.asarray(distilled)))
    best = np.stack([np.asarray(as_float(jnp.asarray(members[i])))[d["idx_member"][i]] for i in range(len(dist))])
    flat_dist, flat_best = dist[dmask], best[dmask]
    d_pix = float(np.prod(dist.shape[2:]))
    dm, dn = d["d_member"][dmask], d["d_non"][dmask]
    return {
        "closer_to_member": float(np.mean(dm < dn)),
        "auc_distilled_closer": roc_auc(-dm, -dn),
        "best_match_mse": float(np.mean(dm) / d_pix),
        "best_match_psnr": float(np.mean(psnr(flat_dist, flat_best))),
        "best_match_ssim": float(np.mean(ssim(flat_dist, flat_best))),
        "mia": mia_report(-d["mia_member"][mask], -mia_non),
        "num_distilled": int(dmask.sum()),
    }
