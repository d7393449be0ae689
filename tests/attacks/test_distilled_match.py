"""Distilled-image matching (DOSFL): memorising vs. unrelated distilled sets, vmapped over clients."""

import numpy as np

from fedjax_gen.attacks.distilled_match import distilled_report


def test_distilled_match(digits):
    x, xt = digits["x_train"], digits["x_test"][:100]
    c, n, m = 3, 30, 10
    members = x[: c * n].reshape(c, n, 8, 8, 1)
    mask = np.ones((c, n), bool)
    mask[2, 25:] = False  # a padded client
    rng = np.random.default_rng(0)
    leaky = np.clip(members[:, :m] + rng.normal(0, 0.05, members[:, :m].shape), -1, 1)
    r = distilled_report(leaky.astype(np.float32), members, mask, xt)
    assert r["closer_to_member"] > 0.95 and r["auc_distilled_closer"] > 0.95
    assert r["best_match_psnr"] > 20 and r["best_match_ssim"] > 0.8 and r["mia"]["auc"] > 0.6
    unrelated = x[200 : 200 + c * m].reshape(c, m, 8, 8, 1)
    r = distilled_report(unrelated, members, mask, xt)
    assert abs(r["auc_distilled_closer"] - 0.5) < 0.2  # only 30 distilled images
    assert abs(r["mia"]["auc"] - 0.5) < 0.1
