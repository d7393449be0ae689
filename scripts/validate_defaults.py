"""Choosing a method's defaults on validation splits of several datasets, never a test split.

Runs `experiments/<method>.py` once per (dataset, configuration, epsilon) with `--validation`
(a stratified draw of the training split replaces the test split: data/sources.hold_out) and
writes one table of TSTR and FID per dataset. Run directories are kept under --out, so an
interrupted sweep resumes where it stopped and every number can be re-checked.

    python scripts/validate_defaults.py --out SWEEP --shared ../shared/data \\
        --datasets digits,mnist,femnist --epsilons 1 \\
        --config "new=" --config "fixed-clip=--coef-clip 8 --augment auto --num-synthetic 2000"

A configuration is NAME=FLAGS (the flags the method gets on top of the dataset's). `{old_clip}`
in FLAGS is replaced by the previous public clip of the dataset's image shape, 8 sqrt(H W / 784).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (the dataset's flags with {shared} for the data folder, image side): the validation
# sizes hold out about 15-20 % of each training split; at example level the partition changes
# only the bytes of a sum-upload method, not its release.
DATASETS = {
    "digits": ("--dataset digits --clients 100 --partition dirichlet:0.1 --validation 300", 8),
    "mnist": ("--dataset npz:{shared}/mnist.npz --clients 1000 --partition dirichlet:0.1 --validation 10000", 28),
    "femnist": ("--dataset npz:{shared}/femnist_subset/femnist_leaf_sf005_subset.npz --clients 105 "
                "--partition natural --validation 2000", 28),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="sweep folder (created; existing runs in it are reused)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="the data folder")
    p.add_argument("--method", default="dct_gmm")
    p.add_argument("--datasets", default="digits,mnist,femnist")
    p.add_argument("--epsilons", default="1", help="comma-separated; 'none' for no DP")
    p.add_argument("--config", action="append", required=True, help="NAME=FLAGS (repeatable)")
    p.add_argument("--eval", default="quick", choices=("quick", "full"))
    p.add_argument("--extra", default="", help="flags every run gets")
    a = p.parse_args(argv)
    configs = []
    for c in a.config:
        name, sep, flags = c.partition("=")
        if not sep or not name:
            p.error(f"--config {c!r}: write NAME=FLAGS")
        configs.append((name, flags))
    unknown = [d for d in a.datasets.split(",") if d not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}: use {', '.join(DATASETS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ds in a.datasets.split(","):
        flags, side = DATASETS[ds]
        for eps in a.epsilons.split(","):
            privacy = "" if eps == "none" else f"--dp example --epsilon {eps} --delta 1e-5"
            for name, cfg in configs:
                run = out / f"{ds}_{name}_eps{eps}"
                argv_run = ([sys.executable, str(ROOT / "experiments" / f"{a.method}.py")]
                            + shlex.split(flags.format(shared=a.shared)) + shlex.split(privacy)
                            + shlex.split(cfg.format(old_clip=8.0 * math.sqrt(side * side / 784.0)))
                            + shlex.split(a.extra) + ["--eval", a.eval, "--no-progress", "--out", str(run)])
                if not (run / "results.json").is_file():
                    if run.exists():
                        argv_run.append("--overwrite")
                    t = time.time()
                    done = subprocess.run(argv_run, cwd=ROOT, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{run.name}: failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
                        continue
                    print(f"{run.name}: {time.time() - t:.0f} s", flush=True)
                r = json.loads((run / "results.json").read_text())
                rows.append({"dataset": ds, "config": name, "flags": cfg, "epsilon": eps,
                             "tstr": r.get("tstr_accuracy"), "tstr_logreg": r.get("tstr_logreg"), "fid": r.get("fid"),
                             "ceiling": r.get("real_ceiling"), "clip": r.get("clip"),
                             "num_synthetic": r.get("num_synthetic"), "run": run.name})
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    lines = ["| dataset | eps | config | TSTR (recipe, 1 seed) | logreg | FID | clip | synthetic | ceiling |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['epsilon']} | {r['config']} | {fmt(r['tstr'], '.4f')} | "
                     f"{fmt(r['tstr_logreg'], '.4f')} | {fmt(r['fid'], '.1f')} | {fmt(r['clip'], '.3g')} | "
                     f"{r['num_synthetic']} | {fmt(r['ceiling'], '.4f')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
