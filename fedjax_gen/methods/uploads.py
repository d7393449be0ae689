"""Pytree uploads <-> flat uploads.npz arrays: one array per leaf named tree/<path>
(tree/params/Dense_0/kernel, tree/feat_mean, ...), stacked over a leading client axis."""

from __future__ import annotations

import jax
import numpy as np

from fedjax_gen.errors import UserError

_TREE = "tree/"


def _leaf_name(path) -> str:
    return _TREE + jax.tree_util.keystr(path, simple=True, separator="/")


def tree_arrays(stacked) -> dict:
    """{tree/<path>: np.ndarray} for a pytree stacked over clients."""
    leaves = jax.tree_util.tree_flatten_with_path(stacked)[0]
    return {_leaf_name(p): np.asarray(v) for p, v in leaves}


def read_tree_uploads(arrays: dict, template, under: str = ""):
    """Inverse of tree_arrays for the subtree `under` (e.g. "params"): `template` (one
    client's pytree, abstract is fine) gives the structure; leaves come back stacked."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    prefix = _TREE + (under + "/" if under else "")
    names = [prefix + _leaf_name(p)[len(_TREE):] for p, _ in paths]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"uploads.npz lacks {missing[:3]}: written by another model configuration?")
    return jax.tree_util.tree_unflatten(treedef, [arrays[n] for n in names])
