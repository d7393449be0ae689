"""The scoring cache is keyed by content, flat, and safe under concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fedjax_gen.data import load_dataset
from fedjax_gen.metrics import cache
from fedjax_gen.metrics.fid import cache_path as fid_cache_path
from fedjax_gen.metrics.recipe import DEFAULT_RECIPE
from fedjax_gen.metrics.tstr import ceiling_cache_path, real_data_ceiling

TINY = DEFAULT_RECIPE.replace(steps=20, eval_every=10, seeds=2)


def _write_npz(path, digits, flip: bool):
    y_train = (digits.y_train + 1) % 10 if flip else digits.y_train
    np.savez(path, x_train=digits.x_train[..., 0], y_train=y_train, x_test=digits.x_test[..., 0],
             y_test=digits.y_test)


def test_an_entry_is_refused_after_the_data_changes_at_the_same_path(tmp_path):
    digits = load_dataset("digits")
    path = tmp_path / "data.npz"
    _write_npz(path, digits, flip=False)
    before = load_dataset(f"npz:{path}")
    first = real_data_ceiling(before, recipe=TINY, cache_dir=tmp_path / "cache")
    _write_npz(path, digits, flip=True)  # regenerated in place: same name, same path, new labels
    after = load_dataset(f"npz:{path}")
    assert before.name == after.name
    assert ceiling_cache_path(after, TINY, tmp_path / "cache") != ceiling_cache_path(before, TINY, tmp_path / "cache")
    assert fid_cache_path(after, cache_dir=tmp_path / "cache") != fid_cache_path(before, cache_dir=tmp_path / "cache")
    again = real_data_ceiling(after, recipe=TINY, cache_dir=tmp_path / "cache")
    assert again != first  # recomputed on the new content, not the stale entry
    # One flat file per entry: no folder named after the dataset or its path.
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and all(p.startswith("tstr_ceiling-") and p.endswith(".json") for p in entries)


def test_fingerprint_is_content_not_identity():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert cache.fingerprint(a) == cache.fingerprint(a.copy()) == cache.fingerprint(np.asfortranarray(a))
    assert cache.fingerprint(a) != cache.fingerprint(a.reshape(4, 3))  # shape counts
    assert cache.fingerprint(a) != cache.fingerprint(a.astype(np.int16))  # dtype counts
    assert cache.fingerprint(a, extra=1) != cache.fingerprint(a, extra=2)


_WORKER = textwrap.dedent("""
    import json, sys
    from fedjax_gen.data import load_dataset
    from fedjax_gen.metrics.recipe import DEFAULT_RECIPE
    from fedjax_gen.metrics.tstr import real_data_ceiling
    out = real_data_ceiling(load_dataset("digits"), recipe=DEFAULT_RECIPE.replace(steps=20, eval_every=10, seeds=2),
                            cache_dir=sys.argv[1])
    print(json.dumps(out))
""")


def test_two_concurrent_runs_share_one_entry_without_corrupting_it(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0] == results[1]
    files = os.listdir(tmp_path)
    assert len(files) == 1, files  # the entry, no temporary file left behind
    assert json.loads((tmp_path / files[0]).read_text()) == results[0]
    # A third reader gets the entry without recomputing.
    assert real_data_ceiling(load_dataset("digits"), recipe=TINY, cache_dir=tmp_path) == results[0]


def test_a_corrupt_entry_is_recomputed_and_replaced(tmp_path):
    digits = load_dataset("digits")
    path = ceiling_cache_path(digits, TINY, tmp_path)
    first = real_data_ceiling(digits, recipe=TINY, cache_dir=tmp_path)
    path.write_text('{"real_ceiling": 0.5')  # truncated by a crash or a full disk
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        assert real_data_ceiling(digits, recipe=TINY, cache_dir=tmp_path) == first
    assert json.loads(path.read_text()) == first
