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


def test_class_matched_non_members_put_a_same_class_upload_at_chance(digits):
    """Distilled images of the client's two classes that owe nothing to its examples: shared
    non-members of every class make them look leaky (the classes), class-matched per-client
    non-members do not."""
    x, y = digits["x_train"], np.asarray(digits["y_train"])
    two = np.random.default_rng(0).permutation(np.flatnonzero(y < 2))  # exchangeable: one shuffled pool
    members, upload, same_class = x[two[:60]][None], x[two[60:90]][None], x[two[90:150]][None]
    mask = np.ones((1, 60), bool)
    shared = distilled_report(upload, members, mask, digits["x_test"][:200])
    matched = distilled_report(upload, members, mask, same_class, nonmember_mask=np.ones((1, 60), bool))
    assert shared["mia"]["auc"] > 0.8 and shared["closer_to_member"] > 0.8
    assert abs(matched["mia"]["auc"] - 0.5) < 0.1 and abs(matched["auc_distilled_closer"] - 0.5) < 0.15
