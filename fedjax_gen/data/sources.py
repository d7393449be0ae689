"""Dataset sources: `load_dataset(name)` -> `Dataset` (uint8 [N, H, W, C] images, int32 labels).

Names: `digits` (scikit-learn's shipped 8x8 digits, no download), `mnist`, `fashion_mnist`,
`emnist` (tfds `emnist/balanced`, 47 classes), `cifar10` (all through tensorflow-datasets), and
`npz:PATH` (your own file).

tfds datasets are read with the random-access data source API (array_record builds need no
TensorFlow). All images are decoded once and cached as an .npz under `$FEDJAX_GEN_CACHE`
(default `~/.cache/fedjax_gen`), keyed by dataset, version and build directory, so later loads
take about a second. The tfds data dir is `--data-dir`, else `$TFDS_DATA_DIR`, else tfds'
default (`~/tensorflow_datasets`).

Offline recipe
--------------
Building a tfds dataset needs TensorFlow: `pip install 'fedjax_gen[prepare]'` (tensorflow-cpu
and importlib_resources). Without network, put the official files in a directory (for MNIST the
four `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz`; tfds checks their sha256) and build once::

    import tensorflow_datasets as tfds
    tfds.builder("mnist", data_dir=DATA_DIR).download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/the/gz/files"))

then pass `--data-dir DATA_DIR` (TensorFlow is not needed after that). `load_dataset` also tries
this itself when TensorFlow is installed, with tfds' default manual dir
`DATA_DIR/downloads/manual`.

No tfds at all: save `x_train, y_train, x_test, y_test` with `np.savez(PATH, ...)` (images
[N, H, W] or [N, H, W, C], uint8 0..255 or float in [0, 1]; integer labels 0..K-1) and use
`--dataset npz:PATH`. Data that comes split by its owners (a writer, a device) adds
`client_train` (one integer id per training example), or is saved as one pool `x, y, split`
(0 train, 1 test) with `writer` or `client` ids, as LEAF's federated EMNIST is; then
`--partition natural` gives each owner its own client.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
from pathlib import Path

import numpy as np

from fedjax_gen.data.client_data import Dataset
from fedjax_gen.errors import InvalidValue, UserError

# tfds-backed names -> tfds builder names.
_TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "emnist": "emnist/balanced",
    "cifar10": "cifar10",
}
# Valid `--dataset` names; `npz:PATH` is accepted as well.
DATASETS = ("digits", *_TFDS_NAMES)
NPZ_PREFIX = "npz:"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_DECODE_CHUNK = 10_000  # records fetched per batch: bounds the raw-bytes memory.


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads `name` (see module docstring) into host memory; raises `UserError` on bad input."""
    if name == "digits":
        return _load_digits()
    if name.startswith(NPZ_PREFIX):
        return _load_npz(name, name[len(NPZ_PREFIX) :])
    if name in _TFDS_NAMES:
        return _load_tfds(name, data_dir)
    raise UserError(
        f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or npz:PATH"
    )


def subsample(
    dataset: Dataset, max_train: int | None, max_test: int | None, seed: int
) -> Dataset:
    """Random subset of at most `max_train`/`max_test` examples (None = all), class-proportional.

    Kept examples stay in their original order; `num_classes` is unchanged.
    """
    rng = np.random.default_rng(seed)
    tr = _stratified_subset(dataset.y_train, max_train, rng, "--max-train")
    te = _stratified_subset(dataset.y_test, max_test, rng, "--max-test")
    return Dataset(
        name=dataset.name,
        x_train=dataset.x_train[tr],
        y_train=dataset.y_train[tr],
        x_test=dataset.x_test[te],
        y_test=dataset.y_test[te],
        num_classes=dataset.num_classes,
        clients_train=None if dataset.clients_train is None else dataset.clients_train[tr],
    )


# A fixed draw, whatever the run's seed: every run of a tuning study scores on the same held-out set.
VALIDATION_SEED = 0


def hold_out(dataset: Dataset, n: int) -> Dataset:
    """A validation split carved from the training data: a stratified draw of `n` training
    examples (seed VALIDATION_SEED) becomes the evaluation split, the rest stay the training
    split, and the test split is dropped. Choosing hyper-parameters on it never touches the
    test split."""
    if not 1 <= n < len(dataset.y_train):
        raise InvalidValue("validation", f"{{validation}} must be between 1 and {len(dataset.y_train) - 1} (the "
                                         f"training examples minus one), got {n}; omit it to evaluate on the test split")
    held = _stratified_subset(dataset.y_train, n, np.random.default_rng(VALIDATION_SEED), "--validation")
    rest = np.setdiff1d(np.arange(len(dataset.y_train)), held)
    return Dataset(name=dataset.name, x_train=dataset.x_train[rest], y_train=dataset.y_train[rest],
                   x_test=dataset.x_train[held], y_test=dataset.y_train[held], num_classes=dataset.num_classes,
                   clients_train=None if dataset.clients_train is None else dataset.clients_train[rest])


def _stratified_subset(y: np.ndarray, k: int | None, rng, flag: str) -> np.ndarray:
    """Sorted indices of a size-min(k, N) subset whose class mix matches `y`'s.

    Each example's key is (its rank within its class in a random order + u) / class size, with
    u ~ U(0,1): taking the k smallest keys takes every class at rate ~k/N.
    """
    n = len(y)
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise UserError(f"{flag} must be >= 1 (got {k}); omit it to use all examples")
    perm = rng.permutation(n)
    yp = y[perm]
    order = np.argsort(yp, kind="stable")
    _, starts, sizes = np.unique(yp[order], return_index=True, return_counts=True)
    rank, size = np.empty(n), np.empty(n)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)  # rank within its class
    size[order] = np.repeat(sizes, sizes)  # its class's size
    key = (rank + rng.random(n)) / size
    return np.sort(perm[np.argsort(key, kind="stable")[:k]])


# --- digits -------------------------------------------------------------------------------


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixel values are 0..16; rescale to the 0..255 byte scale every dataset uses.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    y = d.target.astype(np.int32)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    return Dataset("digits", x[tr], y[tr], x[te], y[te], num_classes=10)


# --- npz ----------------------------------------------------------------------------------


_CLIENT_KEYS = ("client_train", "writer", "client")  # a training example's client id, where the file names one


def _load_npz(name: str, path: str) -> Dataset:
    """Two layouts: x_train, y_train, x_test, y_test (optionally client_train), or one pool
    x, y, split (0 train, 1 test) with a client id per example in `writer` or `client` (LEAF's
    federated EMNIST layout); `label_names`, where present, fixes the number of classes."""
    p = Path(path).expanduser()
    if not path or not p.is_file():
        raise UserError(f"--dataset {name}: no such file; give an existing .npz path")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # not a zip / pickled objects / truncated file
        raise UserError(f"{p}: cannot read as .npz ({type(e).__name__}: {e}); "
                        "save it with np.savez and no object arrays") from e
    if all(k in arrays for k in ("x", "y", "split")) and not all(k in arrays for k in _NPZ_KEYS):
        arrays = _pooled_to_splits(p, arrays)
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(
            f"{p}: missing arrays {', '.join(missing)}; save it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )

    xs = {s: _npz_images(p, s, arrays[f"x_{s}"]) for s in ("train", "test")}
    ys = {s: _npz_labels(p, s, arrays[f"y_{s}"], len(xs[s])) for s in ("train", "test")}
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UserError(
            f"{p}: x_train images are {xs['train'].shape[1:]} but x_test images are "
            f"{xs['test'].shape[1:]}; both splits need the same image shape"
        )
    if len(xs["train"]) == 0:
        raise UserError(f"{p}: x_train is empty; it needs at least one example")
    x_train, x_test = _npz_to_uint8(p, xs["train"], xs["test"])
    num_classes = int(max(ys["train"].max(initial=0), ys["test"].max(initial=0))) + 1
    if "label_names" in arrays:
        if len(arrays["label_names"]) < num_classes:
            raise UserError(f"{p}: label_names has {len(arrays['label_names'])} names but the labels reach "
                            f"{num_classes - 1}; give one name per class")
        num_classes = len(arrays["label_names"])
    clients = arrays.get("client_train")
    if clients is not None:
        clients = np.asarray(clients)
        if clients.shape != (len(x_train),) or not np.issubdtype(clients.dtype, np.integer):
            raise UserError(f"{p}: client_train must be integers, one per training example ({len(x_train)}), "
                            f"got {clients.dtype} {clients.shape}")
        clients = clients.astype(np.int64)
    return Dataset(name, x_train, ys["train"], x_test, ys["test"], num_classes, clients_train=clients)


def _pooled_to_splits(p: Path, arrays: dict) -> dict:
    """x, y, split (0 train, 1 test) and an optional client id -> the x_train ... layout."""
    split = np.asarray(arrays["split"])
    n = len(arrays["x"])
    if split.shape != (n,) or not np.isin(split, (0, 1)).all():
        raise UserError(f"{p}: split must hold 0 (train) or 1 (test) for each of the {n} examples")
    out = {f"x_{s}": arrays["x"][split == v] for s, v in (("train", 0), ("test", 1))}
    out.update({f"y_{s}": np.asarray(arrays["y"])[split == v] for s, v in (("train", 0), ("test", 1))})
    for key in _CLIENT_KEYS[1:]:
        if key in arrays:
            if np.shape(arrays[key]) != (n,):
                raise UserError(f"{p}: {key} must give one client id per example ({n})")
            out["client_train"] = np.asarray(arrays[key])[split == 0]
            break
    if "label_names" in arrays:
        out["label_names"] = arrays["label_names"]
    return out


def _npz_images(p: Path, split: str, x: np.ndarray) -> np.ndarray:
    """[N, H, W] or [N, H, W, C] -> [N, H, W, C]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(
            f"{p}: x_{split} has shape {x.shape}; images must be [N, H, W] or [N, H, W, C]"
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
            or x.dtype == np.bool_):
        raise UserError(f"{p}: x_{split} has dtype {x.dtype}; images must be numeric")
    return x


def _npz_labels(p: Path, split: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1:
        raise UserError(f"{p}: y_{split} has shape {y.shape}; labels must be a 1-D array [N]")
    if len(y) != n:
        raise UserError(f"{p}: x_{split} has {n} images but y_{split} has {len(y)} labels; "
                        "they must have the same length")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # whole-number floats are fine (common after np.savez of floats)
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{p}: y_{split} has non-integer labels (dtype {y.dtype}); "
                        "use integer class ids 0..K-1")
    if len(y) and y.min() < 0:
        raise UserError(f"{p}: y_{split} has negative labels; use class ids 0..K-1")
    return y.astype(np.int32)


def _npz_to_uint8(p: Path, *xs: np.ndarray) -> list[np.ndarray]:
    """Maps all splits with one shared scale: uint8 as is; float/bool with max <= 1 from
    [0, 1]; anything else from [0, 255]."""
    if all(x.dtype == np.uint8 for x in xs):
        return list(xs)
    vals = [x.astype(np.float64) for x in xs]
    if any(not np.all(np.isfinite(v)) for v in vals):
        raise UserError(f"{p}: images contain NaN or inf; clean them before saving")
    lo = min(v.min(initial=0.0) for v in vals)
    hi = max(v.max(initial=0.0) for v in vals)
    if lo < 0 or hi > 255:
        raise UserError(f"{p}: image values span [{lo:g}, {hi:g}]; "
                        "use uint8 0..255 or floats in [0, 1] or [0, 255]")
    is_unit = hi <= 1.0 and all(
        np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_ for x in xs)
    scale = 255.0 if is_unit else 1.0
    return [np.round(v * scale).astype(np.uint8) for v in vals]


# --- tensorflow-datasets ------------------------------------------------------------------


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds  # lazy: importing tfds costs ~1 s

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    builder = tfds.builder(_TFDS_NAMES[name], data_dir=data_dir)
    if not builder.is_prepared():
        _prepare_or_explain(builder)

    cache = _cache_path(name, builder)
    cached = _read_cache(cache)
    if cached is not None:
        return Dataset(name, *cached, num_classes=builder.info.features["label"].num_classes)

    try:
        sources = builder.as_data_source(
            split=["train", "test"], deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except NotImplementedError as e:  # e.g. a tfrecord build: no random access without TF
        raise UserError(
            f"the tfds build at {builder.data_dir} is not random-access "
            f"({builder.info.file_format}); rebuild it with file_format='array_record' "
            "(see fedjax_gen/data/sources.py) or point --data-dir at an array_record build"
        ) from e
    shape = tuple(builder.info.features["image"].shape)  # (H, W, C)
    (x_train, y_train), (x_test, y_test) = (_decode_split(s, shape) for s in sources)
    if name == "emnist":  # tfds stores EMNIST transposed; make characters upright.
        x_train, x_test = x_train.transpose(0, 2, 1, 3), x_test.transpose(0, 2, 1, 3)
    arrays = (np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)
    _write_cache(cache, arrays)
    return Dataset(name, *arrays, num_classes=builder.info.features["label"].num_classes)


def _prepare_or_explain(builder) -> None:
    """Builds the dataset when TensorFlow is installed; else raises a one-line UserError."""
    fix = (
        "point --data-dir at a prepared tfds build, or pip install 'fedjax_gen[prepare]' and "
        "prepare it (offline: tfds manual_dir with the official files; see "
        "fedjax_gen/data/sources.py), or use --dataset npz:PATH or --dataset digits"
    )
    where = f"tfds dataset {builder.name} is not prepared under {builder.data_dir}"
    if importlib.util.find_spec("tensorflow") is None:
        raise UserError(f"{where} and building it needs TensorFlow: {fix}")
    try:
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # no network, bad checksums, missing manual files, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{where} and preparing it failed ({type(e).__name__}: {msg}): {fix}") from e


def _decode_split(source, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decodes every serialized tf.Example of a RAW_BYTES data source -> uint8 [N, H, W, C],
    int32 [N].

    Parsing the proto ourselves and PIL's raw `tobytes` into a preallocated array is ~2x
    faster than tfds' pure-Python feature decoding (which dominates the load time).
    """
    from PIL import Image
    from tensorflow_datasets.proto import tf_example_pb2

    n = len(source)
    x = np.empty((n, *shape), np.uint8)
    y = np.empty((n,), np.int32)
    mode = {1: "L", 3: "RGB"}.get(shape[-1])
    for start in range(0, n, _DECODE_CHUNK):
        idx = list(range(start, min(n, start + _DECODE_CHUNK)))
        for i, raw in zip(idx, source.__getitems__(idx)):
            feature = tf_example_pb2.Example.FromString(raw).features.feature
            y[i] = feature["label"].int64_list.value[0]
            im = Image.open(io.BytesIO(feature["image"].bytes_list.value[0]))
            if im.mode != mode:
                im = im.convert(mode)
            x[i] = np.frombuffer(im.tobytes(), np.uint8).reshape(shape)
    return x, y


def _cache_path(name: str, builder) -> Path:
    """Cache file keyed by dataset, version, build dir and build time (a rebuild misses)."""
    build = Path(str(builder.data_dir)).resolve()
    info = build / "dataset_info.json"
    stamp = info.stat().st_mtime_ns if info.exists() else 0
    key = hashlib.sha1(f"{builder.name}|{builder.version}|{build}|{stamp}".encode()).hexdigest()
    root = Path(os.environ.get("FEDJAX_GEN_CACHE") or "~/.cache/fedjax_gen").expanduser()
    return root / f"{name}-{builder.version}-{key[:12]}.npz"


def _read_cache(path: Path):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return tuple(f[k] for k in _NPZ_KEYS)
    except Exception:  # corrupt or partial: decode again and overwrite
        return None


def _write_cache(path: Path, arrays) -> None:
    """Atomic write (tmp + rename) so concurrent loaders never read a partial file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **dict(zip(_NPZ_KEYS, arrays)))
        os.replace(tmp, path)
    except OSError as e:  # read-only home etc.: still works, just slower next time
        warnings.warn(f"could not cache decoded dataset at {path} ({e}); set FEDJAX_GEN_CACHE")
