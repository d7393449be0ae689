"""Every registered method at tiny size through the CLI with fixed seeds, reduced to the numbers a
run's seeds fix: results.json (timings and scores left out), the per-round metrics, the
config's plan and method section, the privacy line printed at the start, and digests of synthetic.npz and uploads.npz.

`python tests/methods/golden.py [--write]` runs every case and compares with (or, --write,
rewrites) golden.json; test_parts_unchanged.py runs the same cases under pytest. Record and
check under the same XLA flags (tests/conftest.py's, set here too when run as a script) and
the same jax version: float results differ across compilers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden.json")

DATA = ["--clients", "8", "--max-train", "160", "--seed", "3"]
RUN = ["--eval", "none", "--no-progress", "--save-uploads", "3", "--checkpoint-every", "0"]
GAN = ["--rounds", "2", "--clients-per-round", "4", "--local-steps", "1", "--batch-size", "8", "--width", "8",
       "--latent-dim", "8", "--num-synthetic", "40"]
MERF = ["--num-features", "64", "--gen-steps", "5", "--width", "8", "--latent-dim", "8", "--num-synthetic", "40"]
GMM = ["--max-components", "3", "--num-synthetic", "40"]
SECAGG = ["--secure-aggregation", "secagg"]

# name -> (method, flags). Each concern of the driver is hit once: reduce sum / stack, a server
# phase, several round algorithms, secure aggregation (Skellam accounting, host aggregate, the
# server's view), uplink compression, a method's own byte count, a ledger charge.
CASES = {
    "dp_fedavg_gan": ("dp_fedavg_gan", GAN + ["--gen-steps", "1"]),
    "dp_fedavg_gan_user_dp": ("dp_fedavg_gan", GAN + ["--gen-steps", "1", "--dp", "user", "--epsilon", "5",
                                                     "--clip", "0.5"]),
    "dp_fedavg_gan_secagg": ("dp_fedavg_gan", GAN + ["--gen-steps", "1", "--dp", "user", "--epsilon", "5",
                                                    "--clip", "0.5"] + SECAGG),
    "fedgan_q8": ("fedgan", GAN + ["--uplink", "q8"]),
    "dp_merf": ("dp_merf", MERF),
    "dp_merf_dp": ("dp_merf", MERF + ["--epsilon", "1"]),
    "dp_merf_secagg": ("dp_merf", MERF + ["--epsilon", "1"] + SECAGG),
    "dosfl": ("dosfl", ["--ipc", "1", "--dm-steps", "2", "--batch-size", "8", "--width", "8"]),
    "dense": ("dense", ["--client-model", "mlp", "--client-width", "8", "--local-steps", "2", "--server-steps", "2",
                        "--student-steps", "1", "--ensemble-size", "2", "--gen-width", "8", "--latent-dim", "8",
                        "--num-synthetic", "40"]),
    "dct_gmm": ("dct_gmm", GMM),
    "dct_gmm_dp": ("dct_gmm", GMM + ["--dp", "example", "--epsilon", "1"]),
    "dct_gmm_user": ("dct_gmm", GMM + ["--dp", "user", "--epsilon", "2", "--clip", "2"]),
    "dct_gmm_secagg": ("dct_gmm", GMM + ["--dp", "example", "--epsilon", "1"] + SECAGG),
    "dct_gmm_ledger": ("dct_gmm", GMM + ["--dp", "example", "--epsilon", "1", "--budget", "10"]),  # + --ledger
    # a table (+ --dataset csv:): the class mix of the released histogram, the encoding's release in the plan
    "dp_merf_table": ("dp_merf", ["--num-features", "64", "--gen-steps", "5", "--width", "8", "--latent-dim", "8",
                                  "--num-synthetic", "40", "--epsilon", "5", "--label-column", "label"]),
}
TABLE = {"dp_merf_table"}
# A deployment's mechanism keys come from the OS (fresh_noise): only its accounting is fixed.
FRESH = {"dct_gmm_ledger"}
TIMING = {"wall_seconds", "training_seconds", "phase_seconds", "rounds_per_second", "seconds", "elapsed"}


def _strip(obj):
    """obj without timing entries (at any depth)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


# Secure aggregation's masks come from the OS (secure.secure_sum's secret_seed None), so the
# masked integers and what they decode to are shapes only; the quantised noisy uploads are seeded.
SEEDED_UNDER_SECAGG = {"uploaded", "client_ids", "freq_seed", "noise_std", "secagg_bits", "secagg_scale"}


def _digest(path: str, secagg: bool = False) -> dict:
    import numpy as np

    if not os.path.exists(path):
        return {}
    with np.load(path) as f:
        out = {}
        for k in sorted(f.files):
            a = np.ascontiguousarray(f[k])
            out[k] = {"shape": list(a.shape), "dtype": str(a.dtype)}
            if not secagg or k in SEEDED_UNDER_SECAGG:
                out[k]["sha256"] = hashlib.sha256(a.tobytes()).hexdigest()[:16]
        return out


def _table(root: str) -> str:
    """A tiny labelled CSV (600 records: a categorical, two numbers, three classes), seeded."""
    import numpy as np

    path = os.path.join(root, "table.csv")
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("proto,bytes,rate,label\n")
        for _ in range(600):
            label = rng.choice(["normal", "dos", "probe"], p=[0.5, 0.3, 0.2])
            proto = "tcp" if label == "dos" else rng.choice(["tcp", "udp", "icmp"])
            f.write(f"{proto},{int(rng.exponential(1000 if label == 'normal' else 50))},"
                    f"{rng.uniform(0.8, 1) if label == 'probe' else rng.uniform(0, 1):.2f},{label}\n")
    return path


def record(name: str, root: str) -> dict:
    """Runs case `name` in root/<name>; returns its deterministic numbers."""
    from fedjax_gen import cli, methods

    method, flags = CASES[name]
    out = os.path.join(root, name)
    argv = DATA + RUN + flags + ["--out", out]
    if name in TABLE:
        argv = [a for a in argv if a not in ("--max-train", "160")] + ["--dataset", "csv:" + _table(root)]
    if name in FRESH:
        argv += ["--ledger", os.path.join(root, f"{name}-ledger.json")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = cli.main_for(method)(argv)
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("privacy:")]
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    key = methods.get(method).config_key
    rec = {"results": _strip(results), "metrics": _strip(metrics), "plan": config.get("plan"),
           "method_config": config.get(key), "synthetic": _digest(os.path.join(out, "synthetic.npz")),
           "uploads": _digest(os.path.join(out, "uploads.npz"), secagg="secagg" in flags), "privacy_line": lines}
    if name in FRESH:  # what the seeds fix of a deployment: its accounting and what it charged
        rel = dict(rec["results"].get("release") or {})
        rec = {"privacy": rec["results"]["privacy"], "plan": rec["plan"],
               "release": {k: rel.get(k) for k in ("noise_multipliers", "releases", "ledger_epsilon", "clip_estimated")},
               "privacy_line": lines, "bytes_up": rec["results"]["bytes_up"], "bytes_down": rec["results"]["bytes_down"]}
    return json.loads(json.dumps(rec).replace(root, "ROOT"))  # tuples as lists, as in golden.json


def versions() -> dict:
    import jax

    return {"jax": jax.__version__, "backend": jax.default_backend()}


def compare(got, want, path: str = "", rtol: float = 1e-6) -> list[str]:
    """Differences between two records (floats within rtol); [] when equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}/{k}: missing" for k in want if k not in got]
        out += [f"{path}/{k}: unexpected" for k in got if k not in want]
        for k in want:
            if k in got:
                out += compare(got[k], want[k], f"{path}/{k}", rtol)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in compare(g, w, f"{path}[{i}]", rtol)]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if want == got or abs(got - want) <= rtol * max(abs(want), abs(got)):
            return []
        return [f"{path}: {got!r} != {want!r}"]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def main(argv) -> int:
    import tempfile

    write = "--write" in argv
    names = [a for a in argv if not a.startswith("--")] or list(CASES)
    got = {}
    with tempfile.TemporaryDirectory() as root:
        for name in names:
            got[name] = record(name, root)
    if write:
        old = {}
        if os.path.exists(GOLDEN):
            with open(GOLDEN) as f:
                old = json.load(f).get("cases", {})
        with open(GOLDEN, "w") as f:
            json.dump({"versions": versions(), "cases": {**old, **got}}, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {len(got)} case(s) to {GOLDEN}")
        return 0
    with open(GOLDEN) as f:
        want = json.load(f)["cases"]
    bad = 0
    for name, rec in got.items():
        diffs = compare(rec, want[name])
        bad += bool(diffs)
        print(f"{name}: {'same' if not diffs else 'DIFFERENT'}")
        for d in diffs[:20]:
            print("   ", d)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    sys.exit(main(sys.argv[1:]))
