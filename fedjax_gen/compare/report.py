"""The comparison's outputs: comparison.csv (every run), comparison.md (mean +- std over
seeds, one table per dataset/partition, attacks by adversary, the missing cells of a partial
root), plots (matplotlib; attack vs accuracy per adversary) and one self-contained
report.html with the table, the plots and a readable sample grid per method."""

from __future__ import annotations

import base64
import csv
import io
import os

import numpy as np

from fedjax_gen.compare.collect import ADVERSARIES, ADVERSARY_LABELS, COLUMNS

THREAT_NOTE = ("Attacks by threat model: each adversary's strongest attack on what it really gets, as AUC "
               "(TPR@1%FPR) and the attack's name with the view it read. consumer: anyone holding the synthetic set "
               "or the released generator; honest-but-curious server: what it receives, in brackets (cleartext "
               "uploads, or masked uploads under secure aggregation, where no clear-upload attack counts); malicious "
               "server: crafted broadcasts. n/a: no attack of that adversary applies to the method; not run: one "
               "applies but the run was not attacked with it. What-if views (noise added by the attack) never count.")


def write_csv(rows, path: str) -> None:
    """comparison.csv beside the runs: each run named relative to it (the table names no path of
    the machine it was made on, and stays valid when the root is moved)."""
    here = os.path.abspath(os.path.dirname(path))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            run = r.get("run")
            if run and os.sep in str(run):  # a bare cell name (a missing row) stays as it is
                r = {**r, "run": os.path.relpath(os.path.abspath(run), here)}
            w.writerow(r)


def _pm(mean, std, fmt="{:.3f}"):
    if mean is None:
        return "-"
    return fmt.format(mean) + ("" if not std else " ± " + fmt.format(std))


def _eps(e):
    return "none" if e is None else f"{e:g}"


def _point_label(a) -> str:
    """A plot point's label: the series and its budget ("no DP" rather than "none", which would
    read as an uplink)."""
    return f"{a['method']}, " + ("no DP" if a["epsilon"] is None else f"eps {a['epsilon']:g}")


def _threat_cell(a, adv: str) -> str:
    """One adversary's cell: AUC (TPR@1%FPR) and the attack, or why there is none."""
    name = a.get(f"{adv}_attack")
    sees = f" [{a['server_sees']}]" if adv != "consumer" and a.get("server_sees") else ""
    if a.get(f"{adv}_auc") is None:
        return name or "-"
    return (f"{_pm(a[f'{adv}_auc'], a[f'{adv}_auc_std'])} ({_pm(a[f'{adv}_tpr_at_1pct_fpr'], None)}) "
            f"{name}{sees}")


def markdown(agg, dataset: str) -> str:
    lines = [f"# Comparison on {dataset}", ""]
    table = dataset.startswith("csv:")  # a table: TSTR by HistGradientBoosting, ceiling its real-data score
    if table:
        lines += ["A table: TSTR is HistGradientBoosting's accuracy (and logistic regression's), the ceiling "
                  "HistGradientBoosting trained on the real records; each run's results.json holds macro-F1, the "
                  "binary variant, marginals, correlations, DCR and the nearest-record attack.", ""]
    augments = sorted({a["augment"] for a in agg} - {"none"})  # aggregate() writes "none" for no transform
    if augments:  # transforms of a synthetic set change its TSTR: say which rows had them
        lines += ["Rows marked * drew their synthetic set through --augment " + "; ".join(augments)
                  + " (post-processing, no privacy cost).", ""]
    lines += [THREAT_NOTE, ""]
    for part in sorted({a["partition"] for a in agg}, key=str):
        lines += [f"## partition {part}", "",
                  f"| method | epsilon | seeds | TSTR ({'HGB' if table else 'CNN'}) | TSTR (logreg) | real ceiling | "
                  "FID | uplink / client | " + " | ".join(f"{ADVERSARY_LABELS[adv]} attack" for adv in ADVERSARIES)
                  + " | wall s | status |",
                  "|---|---|---|---|---|---|---|---|" + "---|" * len(ADVERSARIES) + "---|---|"]
        for a in [a for a in agg if a["partition"] == part]:
            up = a["bytes_up_per_client"]
            lines.append(
                f"| {a['method']}{'' if a['augment'] == 'none' else ' *'} | {_eps(a['epsilon'])} | {a['seeds']} | "
                f"{_pm(a['tstr_accuracy'], a['tstr_accuracy_std'])} | {_pm(a['tstr_logreg'], a['tstr_logreg_std'])} | "
                f"{_pm(a['real_ceiling'], None)} | {_pm(a['fid'], a['fid_std'], '{:.1f}')} | "
                f"{'-' if up is None else f'{up / 1e3:.1f} KB'} | "
                + " | ".join(_threat_cell(a, adv) for adv in ADVERSARIES)
                + f" | {_pm(a['wall_seconds'], None, '{:.0f}')} | {a['status']} |")
        lines.append("")
    missing = [m for a in agg for m in a.get("missing") or ()]
    if missing:  # a partial study root (--collect while cells run, or after some failed)
        lines += [f"## Missing cells ({len(missing)})", "",
                  "Cells of the grid the runs here span that neither finished nor were skipped:", ""]
        lines += [f"- {m}" for m in missing] + [""]
    return "\n".join(lines)


def pareto(points):
    """Indices of the points not dominated in (higher accuracy, lower cost)."""
    keep = []
    for i, (c, a) in enumerate(points):
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i):
            keep.append(i)
    return keep


def plots(agg, out_dir: str) -> dict:
    """PNG plots; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [a for a in agg if a["status"] == "ok" and a["tstr_accuracy"] is not None]
    methods = sorted({a["method"] for a in ok})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    paths = {}

    def save(fig, name):
        path = os.path.join(out_dir, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths[name] = path

    # accuracy vs epsilon (non-private drawn at the right edge)
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [a["epsilon"] for a in ok if a["epsilon"] is not None]
    right = (max(finite) * 3) if finite else 100.0
    for m in methods:
        pts = sorted(((a["epsilon"] if a["epsilon"] is not None else right), a["tstr_accuracy"],
                      a["tstr_accuracy_std"] or 0) for a in ok if a["method"] == m)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=m,
                    color=colors[m], capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel(f"epsilon (rightmost point: no DP, drawn at {right:g})")
    ax.set_ylabel("TSTR accuracy")
    if ax.get_legend_handles_labels()[0]:  # an empty study has nothing to name
        ax.legend(fontsize=8)
    save(fig, "accuracy_vs_epsilon")

    # accuracy vs uplink bytes per client, Pareto frontier marked
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(a["bytes_up_per_client"], a["tstr_accuracy"]) for a in ok if a["bytes_up_per_client"]]
    front = set(pareto(pts))
    labelled = [a for a in ok if a["bytes_up_per_client"]]
    for i, a in enumerate(labelled):
        ax.scatter(a["bytes_up_per_client"], a["tstr_accuracy"], color=colors[a["method"]],
                   marker="*" if i in front else "o", s=120 if i in front else 40,
                   label=a["method"] if a is next(b for b in labelled if b["method"] == a["method"]) else None)
        ax.annotate(_eps(a["epsilon"]), (a["bytes_up_per_client"], a["tstr_accuracy"]), fontsize=7)
    fp = sorted(pts[i] for i in front)
    if fp:
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "k--", lw=0.8, label="Pareto frontier")
    ax.set_xscale("log")
    ax.set_xlabel("uplink bytes per client (log)")
    ax.set_ylabel("TSTR accuracy")
    if ax.get_legend_handles_labels()[0]:  # an empty study has nothing to name
        ax.legend(fontsize=8)
    save(fig, "accuracy_vs_uplink")

    # each adversary's strongest attack vs accuracy
    for adv in ADVERSARIES:
        for key, label, name in ((f"{adv}_auc", "AUC", f"attack_auc_vs_accuracy_{adv}"),
                                 (f"{adv}_tpr_at_1pct_fpr", "TPR@1%FPR", f"attack_tpr_vs_accuracy_{adv}")):
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = [a for a in ok if a.get(key) is not None]
            for a in drawn:
                ax.scatter(a["tstr_accuracy"], a[key], color=colors[a["method"]])
                ax.annotate(_point_label(a), (a["tstr_accuracy"], a[key]), fontsize=7)
            if not drawn:
                ax.text(0.5, 0.5, f"no {ADVERSARY_LABELS[adv]} attack result", ha="center", va="center",
                        transform=ax.transAxes)
            if key.endswith("_auc"):
                ax.axhline(0.5, color="grey", lw=0.8)
            ax.set_title(f"{ADVERSARY_LABELS[adv]}: strongest attack", fontsize=10)
            ax.set_xlabel("TSTR accuracy")
            ax.set_ylabel(f"strongest {ADVERSARY_LABELS[adv]} attack {label}")
            save(fig, name)

    # accuracy vs compression ratio
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in ok:
        ax.scatter(a["compression_ratio"] or 1.0, a["tstr_accuracy"], color=colors[a["method"]])
        ax.annotate(_point_label(a), (a["compression_ratio"] or 1.0, a["tstr_accuracy"]),
                    fontsize=7)
    ax.margins(x=0.35)  # room for the labels right of the rightmost points
    ax.set_xlabel("uplink compression ratio (uncompressed / sent bytes)")
    ax.set_ylabel("TSTR accuracy")
    save(fig, "accuracy_vs_compression")
    return paths


def sample_grid(run_dir: str, out_path: str, per_class: int = 8, min_pixels: int = 48) -> str | None:
    """The run's synthetic samples, one row per class (labelled), upscaled so a digit is >= min_pixels."""
    from fedjax_gen.viz import readable_scale, save_class_grid

    path = os.path.join(run_dir, "synthetic.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        x, y = f["x"], f["y"]
    if x.dtype != np.uint8:  # a table's encoded records: its pictures are the run's marginals.png
        return None
    k = int(max(y.max(initial=0) + 1, 1))
    save_class_grid(out_path, x, y, k, per_class, scale=readable_scale(x.shape[1], min_pixels))
    return out_path


def _img(path: str) -> str:
    data = base64.b64encode(open(path, "rb").read()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def html(markdown_text: str, plot_paths: dict, grids: dict, path: str, command: str) -> None:
    """One self-contained HTML file (images inlined)."""
    import html as h

    rows, body = markdown_text.splitlines(), []
    table = []
    for line in rows + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            cells = [[c.strip() for c in t.strip("|").split("|")] for t in table if not set(t) <= set("|-")]
            body.append("<table border=1 cellpadding=4 style='border-collapse:collapse'>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{h.escape(c)}</{'th' if i == 0 else 'td'}>"
                                 for c in r) + "</tr>" for i, r in enumerate(cells)) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{h.escape(line.lstrip('#').strip())}</h{level}>")
        elif line:
            body.append(f"<p>{h.escape(line)}</p>")
    body.append(f"<p>Command: <code>{h.escape(command)}</code></p>")
    body.append("<h2>Plots</h2>" + "".join(f"<h3>{h.escape(n)}</h3>{_img(p)}" for n, p in plot_paths.items()))
    body.append("<h2>Samples (one row per class)</h2>" + "".join(
        f"<h3>{h.escape(n)}</h3>{_img(p)}" for n, p in grids.items()))
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>fedjax_gen comparison</title><body style="
                "'font-family:sans-serif;max-width:1100px;margin:auto'>" + "\n".join(body) + "</body>")
