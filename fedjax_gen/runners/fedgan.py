"""Federated GAN training: `python experiments/fedgan.py --clients 1000`.

Flow: parse flags -> validate data and privacy budget (nothing written yet) -> build the
algorithm, the round and the state (fresh, resumed or forked from a checkpoint) -> create
the run directory -> rounds with a progress bar, metrics.jsonl, checkpoints, evals ->
synthetic.npz, samples.png, results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
from tqdm.auto import tqdm

from fedjax_gen import cli, distributed
from fedjax_gen.algorithms import GAN_ALGORITHMS, GANConfig
from fedjax_gen.checkpoint import Checkpointer
from fedjax_gen.errors import UserError
from fedjax_gen.experiment import (
    balanced_labels,
    data_layout,
    evaluate,
    export_and_evaluate,
    generate,
    prepare_federated_data,
    removed_on_user_error,
    write_membership,
)
from fedjax_gen.federated import (
    client_mesh,
    conv_impl_for,
    default_execution,
    make_round,
    parse_execution,
    place,
    run_rounds,
)
from fedjax_gen.privacy.dp_config import DPConfig
from fedjax_gen.privacy.plan import make_plan
from fedjax_gen.run_dir import RunDir

# Flags that may change when resuming a run (everything else must match the saved run).
_RESUMABLE = {"rounds", "eval_every", "checkpoint_every", "execution", "num_synthetic", "resume",
              "out", "tstr_steps", "fid_classifier_steps", "progress", "coordinator_address", "num_processes", "process_id",
              "bucket"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_flags(p)
    g = p.add_argument_group("federated GAN")
    g.add_argument("--algorithm", default="dp_fedavg_gan", choices=sorted(GAN_ALGORITHMS))
    g.add_argument("--model", default="mlp", choices=("mlp", "dcgan"))
    g.add_argument("--rounds", type=int, default=300)
    g.add_argument("--clients-per-round", type=int, default=50)
    g.add_argument("--local-steps", type=int, default=5)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--client-optimizer", default="adam", choices=("adam", "sgd"))
    g.add_argument("--client-lr", type=float, default=2e-4)
    g.add_argument("--server-lr", type=float, default=1.0)
    g.add_argument("--gen-steps", type=int, default=5, help="dp_fedavg_gan: G steps on the server per round")
    g.add_argument("--gen-lr", type=float, default=2e-4)
    g.add_argument("--gen-batch-size", type=int, default=64)
    g.add_argument("--latent-dim", type=int, default=64)
    g.add_argument("--width", type=int, default=64)
    g.add_argument("--weighting", default="count", choices=("count", "uniform"))
    g.add_argument("--execution", default="auto", help="auto | vmap | loop | chunked:N")
    cli.add_bucket_flag(g)
    g.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "im2col"))
    g.add_argument("--rounds-per-call", type=int, default=1,
                   help="scan this many rounds per compiled call (vmap execution only)")
    cli.add_dp_flags(p)
    g = p.add_argument_group("run")
    g.add_argument("--eval-every", type=int, default=0, help="rounds between evals (0: only at the end)")
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--from-checkpoint", default=None, metavar="RUN_DIR[:ROUND]",
                   help="fork: start from another run's checkpoint with these flags")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    cli.add_output_flags(p)
    cli.add_distributed_flags(p)
    return p


def _resolve_args(parser, argv):
    args = parser.parse_args(argv)
    if not args.resume:
        return args
    if not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    saved = RunDir(args.out).read_json("config.json")["flags"]
    explicit = cli.explicit_flags(parser, argv)
    changed = sorted(k for k in explicit - _RESUMABLE if getattr(args, k) != saved.get(k))
    if changed:
        raise UserError(f"--resume keeps the run's flags but {changed} differ: fork with "
                        "--from-checkpoint RUN_DIR and a new --out instead")
    merged = {**saved, **{k: getattr(args, k) for k in explicit & _RESUMABLE}, "resume": True}
    return argparse.Namespace(**merged)


def _validate(args, fed):
    for name in ("rounds", "clients_per_round", "local_steps", "batch_size", "gen_steps", "num_synthetic"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("checkpoint_every", "eval_every"):
        every = getattr(args, name)
        if args.rounds_per_call > 1 and every % args.rounds_per_call:
            raise UserError(f"--{name.replace('_', '-')} {every} must be a multiple of "
                            f"--rounds-per-call {args.rounds_per_call}")
    if args.clients_per_round > args.clients:
        raise UserError(f"--clients-per-round {args.clients_per_round} exceeds --clients {args.clients}: lower it")


def _gan_config(args, fed, dp, execution):
    conv_impl = conv_impl_for(execution) if args.conv_impl == "auto" else args.conv_impl
    ds = fed.dataset
    return GANConfig(
        image_shape=ds.image_shape, num_classes=ds.num_classes, model=args.model,
        latent_dim=args.latent_dim, width=args.width, conv_impl=conv_impl,
        local_steps=args.local_steps, batch_size=args.batch_size,
        client_optimizer=args.client_optimizer, client_lr=args.client_lr, server_lr=args.server_lr,
        gen_steps=args.gen_steps, gen_batch_size=args.gen_batch_size, gen_lr=args.gen_lr,
        weighting=args.weighting, dp=dp,
    )


def _privacy(args, fed):
    if args.dp == "none":
        return DPConfig(), None
    sigma, target = args.noise_multiplier, args.epsilon
    if args.resume and target is not None:
        # The noise was calibrated for the run's original length: keep it, and refuse to
        # train past the budget rather than re-calibrating mid-run.
        sigma, target = RunDir(args.out).read_json("config.json")["gan_config"]["dp"]["noise_multiplier"], None
    plan = make_plan(
        args.dp, rounds=args.rounds, local_steps=args.local_steps, clients=args.clients,
        clients_per_round=args.clients_per_round, client_counts=fed.counts,
        batch_size=args.batch_size, delta=args.delta, accountant=args.accountant,
        noise_multiplier=sigma, epsilon=target,
    )
    spent = plan.report(args.rounds)["epsilon"]
    if args.epsilon is not None and (spent is None or spent > args.epsilon * (1 + 1e-6)):
        raise UserError(f"{args.rounds} rounds would spend epsilon {spent:.4g} > the budget "
                        f"{args.epsilon}: lower --rounds (or fork a new run with a new budget)")
    dp = DPConfig(args.dp, args.clip, plan.noise_multiplier, args.distributed_noise,
                  args.clients_per_round, args.microbatch_size)
    return dp, plan


def main(argv=None):
    parser = build_parser()
    args = _resolve_args(parser, argv)
    # Before anything touches a jax backend: a multi-process job's mesh spans all hosts.
    distributed.maybe_initialize(getattr(args, "coordinator_address", None),
                                 getattr(args, "num_processes", None), getattr(args, "process_id", None))
    main_process = distributed.is_main_process()
    fed = prepare_federated_data(args)
    _validate(args, fed)
    dp, plan = _privacy(args, fed)
    if plan is not None and main_process:
        eps = plan.report(args.rounds)["epsilon"]
        print(f"privacy: {dp.mode}-level, noise multiplier {dp.noise_multiplier:.4g}, "
              f"epsilon {eps:.3g} at delta {args.delta:g} after {args.rounds} rounds ({args.accountant})")
    mesh = client_mesh()
    n_dev = mesh.devices.size
    execution = (default_execution(args.model, num_devices=n_dev) if args.execution == "auto"
                 else parse_execution(args.execution, n_dev))
    cfg = _gan_config(args, fed, dp, execution)
    algorithm = GAN_ALGORITHMS[args.algorithm](cfg)
    root = jax.random.key(args.seed)
    init_key, train_key, eval_key = (jax.random.fold_in(root, i) for i in range(3))
    state = algorithm.init(init_key)
    # Buckets no shorter than a local batch draw the same minibatches as unbucketed.
    data = fed.clients_for(execution, min_length=args.batch_size, bucket=getattr(args, "bucket", "auto"))
    rnd = make_round(algorithm, num_clients=args.clients, clients_per_round=args.clients_per_round,
                     execution=execution, mesh=mesh, example_state=state, example_data=data)

    out = args.out or cli.default_out(args.algorithm)
    if jax.process_count() > 1 and not args.out:
        raise UserError("multi-process runs need an explicit --out (the same path, on a shared "
                        "filesystem, in every process)")
    # Restore (resume / fork) before creating anything, so a bad checkpoint writes nothing.
    if args.resume:
        ckpt = Checkpointer(RunDir(out).checkpoint_dir, create=False)
        state = ckpt.restore(None, state)
    elif args.from_checkpoint:
        src, _, step = args.from_checkpoint.partition(":")
        state = Checkpointer(RunDir(src).checkpoint_dir, create=False).restore(
            int(step) if step else None, state)
    start_round = int(state.round)
    if start_round >= args.rounds:
        raise UserError(f"the state is already at round {start_round} >= --rounds {args.rounds}: raise --rounds")

    config = {"flags": vars(args), "gan_config": _jsonable(cfg), "execution": str(execution),
              "devices": n_dev, "backend": jax.default_backend(), "padded_clients_per_round": rnd.padded_clients,
              **data_layout(data)}
    created = not args.resume
    with removed_on_user_error(out, created and main_process):
        # Only process 0 writes the run directory and metrics; all processes take part in
        # orbax's checkpoint saves (it coordinates multi-process writes itself).
        if args.resume:
            run_dir = RunDir(out)
            if main_process:
                run_dir.truncate_metrics(start_round)
        elif main_process:
            run_dir = RunDir.create(out, config, overwrite=args.overwrite)
            write_membership(run_dir, fed)
        distributed.barrier("fedgan_run_dir")
        if not main_process and not args.resume:
            run_dir = RunDir(out)
        if not args.resume:
            ckpt = Checkpointer(run_dir.checkpoint_dir)
        _train(args, cfg, rnd, state, fed, data, run_dir, ckpt, plan, mesh, start_round, train_key, eval_key)


def _jsonable(cfg):
    d = dataclasses.asdict(cfg)
    d["image_shape"] = list(cfg.image_shape)
    return d


def _sampler(cfg):
    G = cfg.generator

    def sample(gen_params, y, key):
        z = jax.random.normal(key, (y.shape[0], cfg.latent_dim))
        return G.apply(gen_params, z, y if cfg.num_classes else None)

    return sample


def _train(args, cfg, rnd, state, fed, data, run_dir, ckpt, plan, mesh, start_round, train_key, eval_key):
    main = distributed.is_main_process()
    data = place(data, mesh)
    state = place(jax.device_get(state), mesh)
    schedule = plan.schedule(args.rounds)[0] if plan is not None else None
    sample = _sampler(cfg)
    ds = fed.dataset
    t0 = time.time()
    bar = tqdm(initial=start_round, total=args.rounds,
               disable=not args.progress, unit="round", dynamic_ncols=True)
    rounds = run_rounds(rnd, state, data, train_key, start_round, args.rounds, args.rounds_per_call)
    for block_state, done, metrics in rounds:
        bar.update(1)
        state = block_state if block_state is not None else state
        record = {"round": done, **{k: float(v) for k, v in metrics.items()}}
        if schedule is not None:
            record["epsilon"] = float(schedule[done - 1])
        if args.eval_every and done % args.eval_every == 0 and done < args.rounds and main:
            labels = balanced_labels(min(args.num_synthetic, 2000), ds.num_classes)
            x_syn = generate(sample, distributed.to_host(state.gen), labels, jax.random.fold_in(eval_key, done))
            record.update({f"eval_{k}": v for k, v in evaluate(ds, x_syn, labels, eval_key, args).items()})
        if main:
            run_dir.append_metrics(record)
        if done % max(args.checkpoint_every, 1) == 0 or done == args.rounds:
            ckpt.save(done, state)  # block ends only (validated in _validate)
        if done % 10 == 0 or done == args.rounds:
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("d_loss", "g_loss", "epsilon")})
    bar.close()
    jax.block_until_ready(state)
    wall = time.time() - t0
    ckpt.close()
    rounds_run = args.rounds - start_round
    if not main:
        return None

    labels = balanced_labels(args.num_synthetic, ds.num_classes)
    x_syn = generate(sample, distributed.to_host(state.gen), labels, eval_key)
    evaluation = export_and_evaluate(run_dir, ds, x_syn, labels, eval_key, args)
    results = {
        "dataset": args.dataset, "algorithm": args.algorithm, "model": args.model,
        "clients": args.clients, "clients_per_round": args.clients_per_round,
        "rounds": args.rounds, "partition": args.partition, **evaluation,
        "bytes_up": rnd.bytes_up * args.rounds, "bytes_down": rnd.bytes_down * args.rounds,
        "bytes_up_per_round": rnd.bytes_up, "bytes_down_per_round": rnd.bytes_down,
        "wall_seconds": wall, "rounds_per_second": rounds_run / max(wall, 1e-9),
        "execution": str(rnd.execution), "num_synthetic": int(args.num_synthetic),
        "privacy": plan.report(args.rounds) if plan is not None else {"privacy_unit": None, "epsilon": None},
    }
    run_dir.write_results(results)
    print(f"done: {run_dir.path}  tstr_accuracy={results['tstr_accuracy']:.4f} fid={results['fid']:.3f} "
          f"({results['rounds_per_second']:.2f} rounds/s)")
    return results
