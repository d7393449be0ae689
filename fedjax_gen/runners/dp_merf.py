"""Federated DP-MERF: `python experiments/dp_merf.py --clients 1000 --epsilon 1`.

Flow: parse flags -> validate data and calibrate the noise (nothing written yet) -> run
directory -> one summing round (each client uploads its class-tagged random-feature sum,
the server adds the Gaussian noise) -> generator training on the server against the
released mean embedding -> checkpoint, synthetic.npz, samples.png, results.json, and
uploads.npz (the first --save-uploads clients' uploads as the server received them, for attacks).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from fedjax_gen import cli
from fedjax_gen import data as fdata
from fedjax_gen.algorithms import dp_merf
from fedjax_gen.errors import UserError
from fedjax_gen.experiment import (
    balanced_labels, generate, prepare_federated_data,
)
from fedjax_gen.federated import client_mesh, make_round, place
from fedjax_gen.privacy.accounting import PrivacySpec, calibrate_noise_multiplier
from fedjax_gen.runners import one_shot


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_data_flags(p)
    g = p.add_argument_group("DP-MERF")
    g.add_argument("--num-features", type=int, default=5000, help="D random Fourier features (even)")
    g.add_argument("--rff-sigma", type=float, default=None,
                   help="Gaussian kernel bandwidth (default 0.75 sqrt(pixels), a public rule of thumb)")
    g.add_argument("--gen-steps", type=int, default=2000)
    g.add_argument("--gen-batch-size", type=int, default=200)
    g.add_argument("--gen-lr", type=float, default=1e-3)
    g.add_argument("--latent-dim", type=int, default=32)
    g.add_argument("--width", type=int, default=64)
    g.add_argument("--log-every", type=int, default=100, help="generator steps between metrics.jsonl records")
    one_shot.add_execution_flag(g)
    one_shot.add_upload_flag(g)
    g = p.add_argument_group("privacy (example level, one Gaussian release)")
    g.add_argument("--epsilon", type=float, default=None, help="target epsilon: calibrates sigma")
    g.add_argument("--noise-multiplier", type=float, default=None, help="sigma (noise std = sigma * sqrt 2)")
    g.add_argument("--delta", type=float, default=1e-5)
    g.add_argument("--accountant", default="rdp", choices=("rdp", "pld"))
    g.add_argument("--distributed-noise", action="store_true",
                   help="each client adds N(0, (sigma sqrt2)^2 / K) instead of the server adding it all")
    cli.add_output_flags(p)
    return p


def _privacy(args, num_examples: int):
    """(noise multiplier, results.json privacy block); (0, None) when non-private."""
    if args.epsilon is not None and args.noise_multiplier is not None:
        raise UserError("give --epsilon or --noise-multiplier, not both")
    if args.epsilon is None and args.noise_multiplier is None:
        if args.distributed_noise:
            raise UserError("--distributed-noise needs --epsilon or --noise-multiplier")
        return 0.0, None
    if not 0 < args.delta < 1.0 / num_examples:
        raise UserError(f"--delta must be in (0, 1/N) = (0, {1.0 / num_examples:.3g}) for N={num_examples} "
                        f"examples, got {args.delta}")
    if args.epsilon is not None:
        z = calibrate_noise_multiplier(args.epsilon, args.delta, 1.0, 1, args.accountant,
                                       num_records=num_examples)
    elif args.noise_multiplier < 0:
        raise UserError(f"--noise-multiplier must be >= 0, got {args.noise_multiplier}")
    else:
        z = args.noise_multiplier
    spec = PrivacySpec.compute(z, 1.0, 1, args.delta, "example", args.accountant).to_dict()
    return z, {**spec, "target_epsilon": args.epsilon, "sensitivity": dp_merf.SENSITIVITY,
               "noise_std": z * dp_merf.SENSITIVITY, "distributed_noise": args.distributed_noise,
               "mechanism": "one Gaussian release of the summed [phi(x) (x) e_y, e_y] (add/remove one example)"}


def main(argv=None):
    args = build_parser().parse_args(argv)
    fed = prepare_federated_data(args)
    one_shot.check_positive(args, "num_features", "gen_steps", "gen_batch_size", "num_synthetic", "log_every")
    if args.num_features % 2:
        raise UserError(f"--num-features must be even (cos and sin per frequency), got {args.num_features}")
    one_shot.saved_clients(args)
    num_examples = int(np.sum(fed.counts))
    z, privacy = _privacy(args, num_examples)
    ds = fed.dataset
    sigma_rff = args.rff_sigma if args.rff_sigma is not None else dp_merf.default_rff_sigma(ds.image_shape)
    if not sigma_rff > 0:
        raise UserError(f"--rff-sigma must be > 0, got {sigma_rff}")
    if privacy:
        print(f"privacy: one Gaussian release, noise multiplier {z:.4g} (std {privacy['noise_std']:.4g}), "
              f"epsilon {privacy['epsilon']:.3g} at delta {args.delta:g}")
    cfg = dp_merf.MERFConfig(
        ds.image_shape, ds.num_classes, num_features=args.num_features, rff_sigma=sigma_rff,
        noise_multiplier=z, distributed_noise=args.distributed_noise, noise_shares=args.clients,
        latent_dim=args.latent_dim, width=args.width, gen_batch_size=args.gen_batch_size, gen_lr=args.gen_lr)
    algorithm = dp_merf.make(cfg)
    mesh = client_mesh()
    execution = one_shot.client_execution(args.execution, mesh.devices.size)
    root = jax.random.key(args.seed)
    init_key, release_key, gen_key, eval_key = (jax.random.fold_in(root, i) for i in range(4))
    state = algorithm.init(init_key)
    data = fed.clients_for(execution, bucket=args.bucket)  # no minibatches: any bucket length is exact
    rnd = make_round(algorithm, num_clients=args.clients, clients_per_round=args.clients,
                     execution=execution, mesh=mesh, example_state=state, example_data=data)
    with one_shot.new_run(args, fed, "dp_merf", "merf_config", cfg, execution, mesh, data) as run_dir:
        return _run(args, cfg, rnd, state, fed, data, run_dir, mesh, release_key, gen_key, eval_key, privacy)


def _write_uploads(run_dir, cfg, freq_seed, fed, release_key, n_clients: int) -> None:
    """uploads.npz: what clients 0..n-1 sent in the release round. embedding [n, C, D] and
    counts [n, C] float32 (with each client's noise share under --distributed-noise; noise_std
    [] says how much), client_ids [n], and the broadcast freq_seed uint32 [2]. Recomputed per
    client (lax.map: one client's features at a time) with the round's own client keys,
    fold_in(split(release_key, 3)[1], id) as make_round derives them, so the saved shares are
    the ones in the released sum."""
    if not n_clients:
        return
    part = fdata.pad_clients(fed.dataset.x_train, fed.dataset.y_train, fed.parts[:n_clients])
    ids, keys = one_shot.all_clients(n_clients, jax.random.split(release_key, 3)[1])
    client_update = dp_merf.make(cfg).client_update
    up = jax.jit(lambda d, k: jax.lax.map(lambda a: client_update(freq_seed, a[0], a[1]).upload, (d, k)))(
        jax.tree.map(jax.numpy.asarray, part), keys)
    noise_std = cfg.noise_std / math.sqrt(cfg.noise_shares) if cfg.distributed_noise else 0.0
    run_dir.write_arrays("uploads.npz", client_ids=np.asarray(ids, np.int32),
                         embedding=np.asarray(up["embedding"], np.float32), counts=np.asarray(up["counts"], np.float32),
                         freq_seed=np.asarray(freq_seed), noise_std=np.float32(noise_std))


def _run(args, cfg, rnd, state, fed, data, run_dir, mesh, release_key, gen_key, eval_key, privacy):
    t0 = time.time()
    state, metrics = rnd.step(place(state, mesh), place(data, mesh), release_key)
    jax.block_until_ready(state)
    t_release = time.time() - t0
    _write_uploads(run_dir, cfg, state.freq_seed, fed, release_key, one_shot.saved_clients(args))
    run_dir.append_metrics({"round": 1, "step": 0, "phase": "release", "seconds": t_release,
                            **{k: float(v) for k, v in metrics.items()}})
    step = dp_merf.make_generator_step(cfg)
    w = jax.jit(dp_merf.frequencies, static_argnums=0)(cfg, state.freq_seed)
    bar = tqdm(range(args.gen_steps), unit="step", dynamic_ncols=True, mininterval=2)
    for i in bar:
        state, loss = step(state, w, jax.random.fold_in(gen_key, i))
        if (i + 1) % args.log_every == 0 or i + 1 == args.gen_steps:
            run_dir.append_metrics({"round": 1, "step": i + 1, "phase": "generator", "mmd_loss": float(loss)})
            bar.set_postfix(mmd_loss=f"{float(loss):.3g}")
    jax.block_until_ready(state)
    wall = time.time() - t0

    labels = balanced_labels(args.num_synthetic, cfg.num_classes)
    x_syn = generate(dp_merf.sampler(cfg), state.gen, labels, eval_key)
    return one_shot.finish(
        run_dir, args, fed, algorithm="dp_merf", state=state, x_syn=x_syn, y_syn=labels, key=eval_key,
        wall=wall, bytes_up=rnd.bytes_up, bytes_down=rnd.bytes_down, execution=rnd.execution,
        privacy=privacy, extra={"release_seconds": t_release, "gen_steps": args.gen_steps,
                                "num_features": cfg.num_features, "rff_sigma": cfg.rff_sigma})
