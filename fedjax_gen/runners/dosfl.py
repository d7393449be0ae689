"""One-shot distilled-data upload (DOSFL with distribution matching):
`python experiments/dosfl.py --clients 1000 --ipc 10`.

Flow: parse flags -> validate -> run directory -> every client distils its data once
(`map_clients` collects the uploads) -> the server concatenates them (subsampled
to --num-synthetic when given; the default 0 keeps them all) -> checkpoint, synthetic.npz, samples.png, results.json,
and uploads.npz (the first --save-uploads clients' images with their owner ids, for attacks).
`--dp example --epsilon E`: DP distribution matching (algorithms/dosfl.py; accounting in
runners/one_shot_privacy.py), init noise only.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from fedjax_gen import cli
from fedjax_gen.algorithms import dosfl
from fedjax_gen.errors import UserError
from fedjax_gen.experiment import prepare_federated_data
from fedjax_gen.federated import client_mesh, place
from fedjax_gen.federated.execution import conv_impl_for, map_clients
from fedjax_gen.runners import one_shot, one_shot_privacy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_flags(p)
    g = p.add_argument_group("DOSFL (distribution matching)")
    g.add_argument("--ipc", type=int, default=10, help="synthetic images per class per client (capped at n_c)")
    g.add_argument("--dm-steps", type=int, default=100, help="distribution-matching steps per client")
    g.add_argument("--dm-lr", type=float, default=0.05, help="Adam learning rate on the pixels")
    g.add_argument("--batch-size", type=int, default=64, help="real examples per DM step")
    g.add_argument("--embed-net", default="mlp", choices=("mlp", "cnn"),
                   help="random embedder; cnn is DM's choice but ~25x slower per client on XLA:CPU")
    g.add_argument("--width", type=int, default=32)
    g.add_argument("--init", default="noise", choices=("noise", "real"))
    one_shot.add_execution_flag(g)
    one_shot.add_upload_flag(g)
    one_shot_privacy.add_flags(p)  # --clip: each example's embedding norm bound C
    cli.add_output_flags(p)
    p.set_defaults(num_synthetic=0)  # 0: keep every uploaded image
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    fed = prepare_federated_data(args)
    one_shot.check_positive(args, "ipc", "dm_steps", "batch_size", "width")
    one_shot.saved_clients(args)
    if args.num_synthetic < 0:
        raise UserError(f"--num-synthetic must be >= 0 (0: keep all uploads), got {args.num_synthetic}")
    plan = one_shot_privacy.plan(args, fed, method="DOSFL", steps=args.dm_steps, steps_flag="--dm-steps",
                                 batch_size=args.batch_size, microbatch=False)
    if plan is not None and args.init == "real":
        raise UserError("--init real starts from raw private images, which would be uploaded: "
                        "use --init noise with --dp")
    mesh = client_mesh()
    execution = one_shot.client_execution(args.execution, mesh.devices.size)
    ds = fed.dataset
    cfg = dosfl.DOSFLConfig(ds.image_shape, ds.num_classes, ipc=args.ipc, steps=args.dm_steps, lr=args.dm_lr,
                            batch_size=args.batch_size, embed_net=args.embed_net, width=args.width,
                            conv_impl=conv_impl_for(execution, rolled=True), init=args.init,
                            dp_clip=args.clip if plan else None,
                            noise_multiplier=plan.noise_multiplier if plan else 0.0)
    # Buckets no shorter than a DM batch draw the same minibatches as unbucketed; --init real's
    # starting images are drawn over [C, N] and so differ in the draw, not the distribution.
    data = fed.clients_for(execution, min_length=args.batch_size, bucket=args.bucket)
    with one_shot.new_run(args, fed, "dosfl", "dosfl_config", cfg, execution, mesh, data) as run_dir:
        return _run(args, cfg, execution, fed, data, run_dir, mesh, plan)


def _write_uploads(run_dir, x, y, owner, n_clients: int) -> None:
    """uploads.npz: x uint8 [M, H, W, C], y int32 [M], owner int32 [M] (client id) for
    the images that clients 0..n_clients-1 uploaded."""
    if n_clients:
        keep = owner < n_clients
        run_dir.write_arrays("uploads.npz", x=np.asarray(x[keep], np.uint8), y=np.asarray(y[keep], np.int32),
                             owner=np.asarray(owner[keep], np.int32))


def _run(args, cfg, execution, fed, data, run_dir, mesh, plan=None):
    root = jax.random.key(args.seed)
    client_key, select_key, eval_key = (jax.random.fold_in(root, i) for i in range(3))
    run = map_clients(dosfl.make_client_fn(cfg), execution, mesh)
    ids, keys = one_shot.all_clients(args.clients, client_key)
    t0 = time.time()
    up = jax.device_get(run(None, place(data, mesh), ids, keys))
    t_clients = time.time() - t0
    valid = up["valid"].reshape(-1)
    x = up["x"].reshape((-1,) + cfg.image_shape)[valid]
    y = up["y"].reshape(-1)[valid]
    owner = np.repeat(np.asarray(ids), up["valid"].shape[1])[valid]
    _write_uploads(run_dir, x, y, owner, one_shot.saved_clients(args))
    uploaded = len(y)
    if args.num_synthetic and uploaded > args.num_synthetic:  # uniform subsample, every class kept in proportion
        keep = np.sort(np.asarray(jax.random.choice(select_key, uploaded, (args.num_synthetic,), replace=False)))
        x, y = x[keep], y[keep]
    wall = time.time() - t0
    per_client = up["valid"].sum(axis=1)
    run_dir.append_metrics({"round": 1, "phase": "clients", "seconds": t_clients,
                            "dm_loss": float(np.mean(up["loss"])), "uploaded_images": int(uploaded)})
    return one_shot.finish(
        run_dir, args, fed, algorithm="dosfl", state={"x": x, "y": y}, x_syn=x, y_syn=y, key=eval_key,
        wall=wall, bytes_up=dosfl.upload_bytes(valid, cfg.image_shape), bytes_down=0, execution=execution,
        privacy=one_shot_privacy.report(
            plan, clip=cfg.dp_clip, sensitivity=dosfl.SENSITIVITY_FACTOR * (cfg.dp_clip or 0.0),
            noise_std=cfg.noise_std,
            mechanism="per DM step, Poisson-sampled per-class sums of clipped embeddings and class counts "
                      "[clip_C(psi(x)) (x) e_y, C e_y], one Gaussian release (add/remove one example)"),
        extra={"uploaded_images": int(uploaded), "max_images_per_client": int(per_client.max()),
               "clients_uploading": int(np.sum(per_client > 0)), "ipc": cfg.ipc, "dm_steps": cfg.steps,
               "embed_net": cfg.embed_net, "init": cfg.init})
