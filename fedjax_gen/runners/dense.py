"""DENSE, one-shot FL by data-free ensemble distillation:
`python experiments/dense.py --clients 1000`.

Flow: parse flags -> validate -> run directory -> every client trains its classifier
from the broadcast common init (`map_clients` collects the models) -> the server trains
a conditional generator against the ensemble and distils a global student from it ->
checkpoint (generator + student), synthetic.npz, samples.png, results.json (with the
student's test accuracy as global_model_accuracy); uploads.npz holds the first
--save-uploads clients' uploads (classifier params + feature statistics) for attacks.
`--dp example --epsilon E`: the clients train with DP-SGD and upload no feature statistics
(algorithms/dense.py; accounting in runners/one_shot_privacy.py).
"""

from __future__ import annotations

import argparse
import time

import jax
from tqdm.auto import tqdm

from fedjax_gen import cli
from fedjax_gen.algorithms import dense
from fedjax_gen.errors import UserError
from fedjax_gen.experiment import (
    balanced_labels, generate, prepare_federated_data,
)
from fedjax_gen.federated import client_mesh, place
from fedjax_gen.federated.execution import conv_impl_for, map_clients
from fedjax_gen.metrics import evaluate_accuracy
from fedjax_gen.models import num_bytes
from fedjax_gen.runners import one_shot, one_shot_privacy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_flags(p)
    g = p.add_argument_group("clients")
    g.add_argument("--client-model", default="cnn", choices=("cnn", "mlp"))
    g.add_argument("--client-width", type=int, default=16)
    g.add_argument("--local-steps", type=int, default=50)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--client-lr", type=float, default=1e-3)
    one_shot.add_execution_flag(g)
    one_shot.add_upload_flag(g)
    one_shot_privacy.add_flags(p)  # DP-SGD in every client: --clip is the per-example gradient bound C
    g = p.add_argument_group("server (generator + student distillation)")
    g.add_argument("--server-steps", type=int, default=500, help="generator steps (each followed by student steps)")
    g.add_argument("--student-steps", type=int, default=2)
    g.add_argument("--ensemble-size", type=int, default=10, help="client models drawn per step")
    g.add_argument("--gen-model", default="mlp", choices=("mlp", "dcgan"))
    g.add_argument("--latent-dim", type=int, default=64)
    g.add_argument("--gen-width", type=int, default=64)
    g.add_argument("--gen-batch-size", type=int, default=64)
    g.add_argument("--gen-lr", type=float, default=1e-3)
    g.add_argument("--student-lr", type=float, default=1e-3)
    g.add_argument("--w-ce", type=float, default=1.0, help="weight of the ensemble's cross-entropy on y")
    g.add_argument("--w-feat", type=float, default=None,
                   help="weight of the feature-statistics match (default 0.1; 0 under --dp, "
                        "where no statistics are uploaded)")
    g.add_argument("--w-adv", type=float, default=0.5, help="weight of the student-ensemble disagreement")
    g.add_argument("--log-every", type=int, default=50)
    cli.add_output_flags(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    fed = prepare_federated_data(args)
    one_shot.saved_clients(args)
    one_shot.check_positive(args, "client_width", "local_steps", "batch_size", "server_steps",
                            "student_steps", "ensemble_size", "gen_batch_size", "num_synthetic", "log_every")
    if args.dp != "none" and args.w_feat:
        raise UserError("--w-feat needs the clients' feature statistics, which are not uploaded under --dp: "
                        "drop --w-feat")
    plan = one_shot_privacy.plan(args, fed, method="DENSE", steps=args.local_steps, steps_flag="--local-steps",
                                 batch_size=args.batch_size, microbatch=True)
    args.w_feat = (0.0 if plan else 0.1) if args.w_feat is None else args.w_feat
    mesh = client_mesh()
    execution = one_shot.client_execution(args.execution, mesh.devices.size)
    ds = fed.dataset
    cfg = dense.DENSEConfig(
        ds.image_shape, ds.num_classes, client_model=args.client_model, client_width=args.client_width,
        local_steps=args.local_steps, batch_size=args.batch_size, client_lr=args.client_lr,
        client_conv_impl=conv_impl_for(execution, rolled=True), ensemble_size=args.ensemble_size,
        gen_model=args.gen_model, latent_dim=args.latent_dim, gen_width=args.gen_width,
        gen_batch_size=args.gen_batch_size, gen_lr=args.gen_lr, student_lr=args.student_lr,
        student_steps=args.student_steps, w_ce=args.w_ce, w_feat=args.w_feat, w_adv=args.w_adv,
        dp_clip=args.clip if plan else None, noise_multiplier=plan.noise_multiplier if plan else 0.0,
        microbatch_size=args.microbatch_size)
    # Buckets no shorter than a local batch draw the same minibatches as unbucketed.
    data = fed.clients_for(execution, min_length=args.batch_size, bucket=args.bucket)
    with one_shot.new_run(args, fed, "dense", "dense_config", cfg, execution, mesh, data) as run_dir:
        return _run(args, cfg, execution, fed, data, run_dir, mesh, plan)


def _run(args, cfg, execution, fed, data, run_dir, mesh, plan=None):
    root = jax.random.key(args.seed)
    init_key, client_key, gen_key, server_key, eval_key = (jax.random.fold_in(root, i) for i in range(5))
    model = cfg.classifier()
    common = jax.jit(model.init)(init_key)
    run = map_clients(dense.make_client_fn(cfg), execution, mesh)
    ids, keys = one_shot.all_clients(args.clients, client_key)
    t0 = time.time()
    uploads = run(place(common, mesh), place(data, mesh), ids, keys)
    jax.block_until_ready(uploads)
    t_clients = time.time() - t0
    run_dir.append_metrics({"round": 1, "step": 0, "phase": "clients", "seconds": t_clients})
    n_saved = one_shot.saved_clients(args)
    if n_saved:
        one_shot.write_tree_uploads(run_dir, jax.tree.map(lambda a: a[:n_saved], uploads), ids[:n_saved])

    state = jax.jit(dense.init_server, static_argnums=0)(cfg, gen_key, common)
    step = dense.make_server_step(cfg, args.clients)
    bar = tqdm(range(args.server_steps), unit="step", dynamic_ncols=True, mininterval=2)
    for i in bar:
        state, metrics = step(state, uploads, jax.random.fold_in(server_key, i))
        if (i + 1) % args.log_every == 0 or i + 1 == args.server_steps:
            record = {k: float(v) for k, v in metrics.items()}
            run_dir.append_metrics({"round": 1, "step": i + 1, "phase": "server", **record})
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("ce", "kd_loss", "ensemble_acc_on_gen")})
    jax.block_until_ready(state)
    wall = time.time() - t0

    upload_one = jax.tree.map(lambda a: a[0], uploads)
    global_acc = evaluate_accuracy(model, state.student, fed.dataset.x_test, fed.dataset.y_test)
    labels = balanced_labels(args.num_synthetic, cfg.num_classes)
    x_syn = generate(dense.sampler(cfg), state.gen, labels, eval_key)
    return one_shot.finish(
        run_dir, args, fed, algorithm="dense", state=state, x_syn=x_syn, y_syn=labels, key=eval_key,
        wall=wall, bytes_up=args.clients * num_bytes(upload_one), bytes_down=args.clients * num_bytes(common),
        execution=execution,
        privacy=one_shot_privacy.report(
            plan, clip=cfg.dp_clip, noise_std=cfg.noise_multiplier * (cfg.dp_clip or 0.0),
            mechanism="DP-SGD in every client: Poisson-sampled per-example clipped gradient sums + Gaussian "
                      "noise (add/remove one example); no feature statistics uploaded"),
        extra={"global_model_accuracy": global_acc, "client_seconds": t_clients,
               "server_steps": args.server_steps, "ensemble_size": min(args.ensemble_size, args.clients),
               "final_ensemble_acc_on_gen": float(metrics["ensemble_acc_on_gen"])})
