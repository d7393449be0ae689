"""What the one-shot baselines (DP-MERF, DOSFL, DENSE) share: flags, client execution,
the end of a run (checkpoint, synthetic set, evaluation, results.json), and uploads.npz
(what an honest-but-curious server received, for fedjax_gen.runners.attack).

A one-shot method talks to every client exactly once, so its results say "rounds": 1
and "clients_per_round" equals the population; bytes are the totals of that exchange.
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import numpy as np

from fedjax_gen import cli
from fedjax_gen.checkpoint import Checkpointer
from fedjax_gen.errors import UserError
from fedjax_gen.experiment import data_layout, export_and_evaluate, removed_on_user_error, write_membership
from fedjax_gen.federated import Execution, default_execution, parse_execution
from fedjax_gen.run_dir import RunDir


def add_execution_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--execution", default="auto", help="auto | vmap | loop | chunked:N (client phase)")
    cli.add_bucket_flag(p)


def client_execution(spec: str, num_devices: int) -> Execution:
    return default_execution("mlp", num_devices=num_devices) if spec == "auto" else parse_execution(spec, num_devices)


def add_upload_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-uploads", type=int, default=50, metavar="N",
                   help="write clients 0..N-1's uploads, as the server received them, to uploads.npz "
                        "(for experiments/attack.py; 0: none)")


def saved_clients(args) -> int:
    """How many clients' uploads go to uploads.npz (the first ones by id)."""
    if args.save_uploads < 0:
        raise UserError(f"--save-uploads must be >= 0, got {args.save_uploads}")
    return min(args.save_uploads, args.clients)


_TREE = "tree/"


def _leaf_name(path) -> str:
    return _TREE + jax.tree_util.keystr(path, simple=True, separator="/")


def write_tree_uploads(run_dir: RunDir, stacked, client_ids) -> None:
    """uploads.npz for pytree uploads stacked over a leading client axis: one array per
    leaf named tree/<path> (e.g. tree/params/Dense_0/kernel), and client_ids [C]."""
    leaves = jax.tree_util.tree_flatten_with_path(stacked)[0]
    run_dir.write_arrays("uploads.npz", client_ids=np.asarray(client_ids, np.int32),
                         **{_leaf_name(p): np.asarray(v) for p, v in leaves})


def read_tree_uploads(arrays: dict, template, under: str = ""):
    """Inverse of write_tree_uploads for the subtree `under` (e.g. "params"): `template`
    (one client's pytree, abstract is fine) gives the structure; leaves come back stacked."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    prefix = _TREE + (under + "/" if under else "")
    names = [prefix + _leaf_name(p)[len(_TREE):] for p, _ in paths]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"uploads.npz lacks {missing[:3]}: written by another model configuration?")
    return jax.tree_util.tree_unflatten(treedef, [arrays[n] for n in names])


def check_positive(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def all_clients(num_clients: int, key):
    """Every client once: ids [K] and per-client keys fold_in(key, id) (as make_round)."""
    ids = jax.numpy.arange(num_clients, dtype=jax.numpy.int32)
    return ids, jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def finish(run_dir: RunDir, args, fed, *, algorithm: str, state, x_syn: np.ndarray, y_syn: np.ndarray,
           key, wall: float, bytes_up: int, bytes_down: int, execution, privacy: dict | None = None,
           extra: dict | None = None) -> dict:
    """Checkpoints the final server state (as round 1), exports and scores the synthetic
    set, writes results.json and prints one summary line. Returns the results."""
    ckpt = Checkpointer(run_dir.checkpoint_dir)
    ckpt.save(1, state)
    ckpt.close()
    evaluation = export_and_evaluate(run_dir, fed.dataset, x_syn, y_syn, key, args)
    results = {
        "dataset": args.dataset, "algorithm": algorithm, "partition": args.partition,
        "clients": args.clients, "clients_per_round": args.clients, "rounds": 1, **evaluation,
        "bytes_up": int(bytes_up), "bytes_down": int(bytes_down),
        "bytes_up_per_client": bytes_up / args.clients, "bytes_down_per_client": bytes_down / args.clients,
        "wall_seconds": wall, "rounds_per_second": 1.0 / max(wall, 1e-9),
        "execution": str(execution), "num_synthetic": int(len(y_syn)),
        "privacy": privacy or {"privacy_unit": None, "epsilon": None},
        **(extra or {}),
    }
    run_dir.write_results(results)
    print(f"done: {run_dir.path}  tstr_accuracy={results['tstr_accuracy']:.4f} fid={results['fid']:.3f} "
          f"bytes_up={results['bytes_up']:.3g} ({wall:.1f} s)")
    return results


@contextlib.contextmanager
def new_run(args, fed, name: str, config_key: str, cfg, execution, mesh, data):
    """Creates the run directory (config.json with the method's config, the client arrays'
    layout, membership.npz) after all validation; a UserError inside the block removes it again."""
    out = default_out(args, name)
    config = {"flags": vars(args), config_key: {**vars(cfg), "image_shape": list(cfg.image_shape)},
              "execution": str(execution), "devices": mesh.devices.size, "backend": jax.default_backend(),
              **data_layout(data)}
    with removed_on_user_error(out, True):
        run_dir = RunDir.create(out, config, overwrite=args.overwrite)
        write_membership(run_dir, fed)
        yield run_dir


def default_out(args, name: str) -> str:
    return args.out or cli.default_out(name)
