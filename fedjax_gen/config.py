"""The frozen configs every run is made of, validated where they are built.

A run is `DataConfig` (what data, how split), the method's own options (a frozen dataclass
registered with the method), `PrivacyConfig` (privacy/config.py), `PerformanceFlags` (how
clients execute: changes speed, never results beyond float rounding) and `RunConfig`
(where it writes, how often it checkpoints and evaluates). Each field is declared with
`option(...)`: its default, help text and domain. `cli.py` generates the flags from these
declarations and `run_dir.py` writes and reads them as config.json, so flags, help,
validation and the saved config cannot disagree.

Validation raises `InvalidValue(field, ...)` naming the field; the CLI words it with the
field's flag.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from fedjax_gen.errors import InvalidValue

_MISSING = dataclasses.MISSING


def option(default, help: str, *, choices=None, min=None, gt=None, lt=None, flag=None, aliases=(),
           resumable: bool = False, negate: str | None = None, metavar: str | None = None,
           positional: bool = False):
    """A config field with its CLI declaration.

    min / gt / lt: the numeric domain (None values are always allowed for Optional fields);
    choices: allowed strings; flag: the flag name if not --field-name; resumable: may change
    when a run is resumed (everything else must match the saved run); negate: for a bool
    that defaults to True, the name of the flag that turns it off (e.g. --no-progress);
    metavar: the value's name in --help (default: FIELD_NAME); positional: a required
    positional argument (e.g. evaluate.py RUN) instead of a flag.
    """
    meta = {"help": help, "choices": choices, "min": min, "gt": gt, "lt": lt, "flag": flag,
            "aliases": tuple(aliases), "resumable": resumable, "negate": negate}
    meta.update({k: v for k, v in (("metavar", metavar), ("positional", positional)) if v})
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def validate_fields(obj) -> None:
    """Checks every option's declared domain; raises InvalidValue naming the field."""
    for f in dataclasses.fields(obj):
        m, v = f.metadata, getattr(obj, f.name)
        if not m or v is None or isinstance(v, bool):
            continue
        where = "{" + f.name + "}"
        if m.get("choices") is not None and v not in m["choices"]:
            raise InvalidValue(f.name, f"{where} {v!r} is not one of {', '.join(map(str, m['choices']))}")
        if isinstance(v, (int, float)):
            if isinstance(v, float) and math.isnan(v):
                raise InvalidValue(f.name, f"{where} must be a number, got nan")
            if isinstance(v, float) and math.isinf(v):  # e.g. --temperature inf: a silently all-zero set
                raise InvalidValue(f.name, f"{where} must be a finite number, got {v}")
            if m.get("min") is not None and v < m["min"]:
                raise InvalidValue(f.name, f"{where} must be >= {m['min']}, got {v}")
            if m.get("gt") is not None and not v > m["gt"]:
                raise InvalidValue(f.name, f"{where} must be > {m['gt']}, got {v}")
            if m.get("lt") is not None and not v < m["lt"]:
                raise InvalidValue(f.name, f"{where} must be < {m['lt']}, got {v}")


def field_types(cls) -> dict:
    """Resolved annotations (Optional[int] -> (int, optional))."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        out[name] = (base, optional)
    return out


def from_dict(cls, d: dict):
    """Builds cls from a (config.json) dict, ignoring unknown keys (a config.json written by a
    version with other fields still reads); JSON lists stay lists (no option is a tuple)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def validated(cls):
    """Class decorator: frozen dataclass whose options are checked on construction: every
    field's bounds, then each class's own __post_init__ along the MRO, base first (an
    Options subclass keeps its base's checks, e.g. methods.secure_sum.SecAggOptions)."""
    cls._own_post_init = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        validate_fields(self)
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("_own_post_init")
            if check is not None:
                check(self)

    # Set before dataclass() runs: its generated __init__ calls __post_init__ only if the
    # class has one at decoration time.
    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)


@validated
class DataConfig:
    dataset: str = option("digits", "digits (embedded, no download) | mnist | fashion_mnist | emnist | "
                          "cifar10 | npz:PATH | csv:PATH (a labelled table, .csv or .csv.gz: see --label-column)")
    data_dir: typing.Optional[str] = option(None, "tfds data dir (default: $TFDS_DATA_DIR, then tfds' default)")
    clients: int = option(100, "client population N", min=1)
    partition: str = option("iid", "iid | dirichlet:ALPHA | shards:K | quantity:ALPHA | natural (the data's "
                            "own owners, e.g. FEMNIST's writers; --clients at most their number)")
    max_examples_per_client: typing.Optional[int] = option(
        None, "cap on a client's examples (drops the rest; bounds padded memory)", min=1)
    max_train: typing.Optional[int] = option(None, "use a stratified subset of the training split", min=1)
    seed: int = option(0, "one seed; each purpose derives its own key")
    validation: int = option(0, "evaluate on a validation split carved from the training data: this many "
                             "training examples (a stratified draw, the same for every run) are held out and "
                             "replace the test split for TSTR, FID and attacks; the run trains on the rest. "
                             "For choosing hyper-parameters without touching the test split (0: the test split)",
                             min=0)
    # Tables (--dataset csv:PATH; data/table_source.py).
    label_column: typing.Optional[str] = option(None, "csv: the class column (default: the --schema file's "
                                                "\"label\")")
    test_csv: typing.Optional[str] = option(None, "csv: the test records (same columns); default: a stratified "
                                            "--holdout of the training file")
    columns_file: typing.Optional[str] = option(None, "csv: the files have no header row; this text file names "
                                                "the columns, one a line (nsl_kdd: the shipped NSL-KDD names)")
    schema: typing.Optional[str] = option(None, "csv: a public schema (JSON: per column its kind and, where public, "
                                          "its range lo/hi or vocabulary; nsl_kdd: the shipped one). Columns it "
                                          "leaves open are estimated privately under DP (charged), from the data "
                                          "without DP")
    kinds: typing.Optional[str] = option(None, "csv: force column kinds, COLUMN=numeric|categorical,...")
    drop_columns: typing.Optional[str] = option(None, "csv: comma-separated columns to leave out")
    holdout: float = option(0.2, "csv without --test-csv: the stratified fraction of the training records held "
                            "out as the test split", gt=0.0, lt=1.0)
    encoding_share: float = option(0.1, "csv under example-level DP: the share of the budget (of 1 / sigma^2) the "
                                   "table encoding's private releases take (ranges, vocabularies, class "
                                   "histogram); the method's noise is calibrated for the rest", gt=0.0, lt=1.0)


@validated
class PerformanceFlags:
    """How clients execute. Changes speed and memory, never results beyond float rounding."""

    execution: str = option("auto", "auto | vmap | loop | chunked:N (client phase)", resumable=True)
    bucket: str = option("auto", "size-bucket the clients' padding (host-loop executions; same results up to "
                         "float rounding, less padding); auto: on when padding all clients to the largest "
                         "would cost > 2x the slots", choices=("auto", "on", "off"), resumable=True)
    conv_impl: str = option("auto", "conv lowering of per-client models", choices=("auto", "xla", "im2col"))
    rounds_per_call: int = option(1, "scan this many rounds per compiled call (vmap execution only)", min=1,
                                  resumable=True)
    microbatch_size: typing.Optional[int] = option(None, "per-example grads materialised at once", min=1)


@validated
class RunConfig:
    out: typing.Optional[str] = option(None, "run directory (default: runs/<method>-<time>)", resumable=True)
    overwrite: bool = option(False, "replace an existing fedjax_gen run directory (never any other directory)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint (or finish its export)",
                          resumable=True)
    from_checkpoint: typing.Optional[str] = option(None, "fork: start from another run's checkpoint with "
                                                   "these flags (RUN_DIR[:STEP])")
    num_synthetic: typing.Optional[int] = option(None, "size of synthetic.npz (default: the training split's size, "
                                                 "as a release is free to sample; 0: all a method has, where it "
                                                 "keeps uploads)", min=0, resumable=True)
    augment: str = option("none", "random label-preserving transforms of the synthetic set, drawn after the "
                          "method (post-processing: no privacy cost): none, auto (rotate:20,scale:0.2,shift:0.07,"
                          "elastic:0.05 on images of side >= 16 px: chosen on MNIST validation, it hurt on 8x8 digits and on "
                          "FEMNIST) or "
                          "rotate:DEG,scale:S,shift:T,elastic:E[,smooth:L][,min_side:PX] (sizes as fractions of "
                          "the image side)", resumable=True)
    tstr_steps: typing.Optional[int] = option(None, "classifier steps for TSTR (default: metrics' own)", min=1,
                                              resumable=True)
    positive_labels: typing.Optional[str] = option(
        None, "csv: comma-separated label levels scored as one class against the rest (binary TSTR, e.g. normal); "
        "default: a level named normal or benign (case-insensitive) if there is one", resumable=True)
    fid_classifier_steps: int = option(1000, "training steps of the FID domain classifier (cached per dataset "
                                       "and steps)", min=1, resumable=True)
    eval_mode: str = option("full", "scoring at the end of the run: full (TSTR over the recipe's 3 classifier "
                            "seeds, logistic regression, real-data ceiling, FID, precision/recall, MMD/KID), quick "
                            "(one TSTR seed; the cached ceiling) or none (export only; score later with "
                            "experiments/evaluate.py RUN)", choices=("full", "quick", "none"), flag="--eval",
                            resumable=True)
    eval_every: int = option(0, "rounds between evals (0: only at the end)", min=0, resumable=True)
    checkpoint_every: int = option(100, "rounds (or server steps) between checkpoints (0: only at the end)",
                                   min=0, resumable=True)
    log_every: int = option(100, "server-phase steps between metrics.jsonl records", min=1, resumable=True)
    uplink: str = option("none", "uplink compression of client uploads: none | q<BITS> (unbiased stochastic "
                         "quantisation, e.g. q8) | topk:<FRACTION> (largest entries per tensor, e.g. topk:0.1) | "
                         "topk-ef:<FRACTION> (top-k with error feedback: each client keeps what it did not "
                         "send and adds it to its next upload); bytes_up counts what is really sent")
    save_uploads: int = option(50, "write clients 0..N-1's uploads, as the server received them, to "
                               "uploads.npz (for experiments/attack.py; 0: none)", min=0)
    progress: bool = option(True, "progress bar", negate="--no-progress", resumable=True)
    tensorboard: bool = option(False, "also write TensorBoard event files to RUN_DIR/tensorboard "
                               "(needs tensorboardX)", resumable=True)
    coordinator_address: typing.Optional[str] = option(None, "multi-process: process 0's HOST:PORT; every "
                                                       "process passes the same one", resumable=True)
    num_processes: typing.Optional[int] = option(None, "multi-process: number of processes", min=1,
                                                 resumable=True)
    process_id: typing.Optional[int] = option(None, "multi-process: this process's id", min=0, resumable=True)
