"""Markdown reports of training and of the paper's experiment, with PNG figures.

Figures are drawn with matplotlib's object API on an Agg canvas (``Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: no global figure state, no GUI backend, so the
same code runs headless in the CLI and inside the QGIS process without touching its Qt canvas.
Numbers are percentages with one decimal, as in the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import paper
from .evaluate import SUMMARY_METRICS, CVResult
from .files import atomic_output, write_text_atomic

if TYPE_CHECKING:
    from .modelcard import ModelCard
    from .train import LabelPlan

METRIC_TITLES = {
    "overall_accuracy": "OA",
    "fscore": "F-score",
    "precision": "Precision",
    "recall": "Recall",
}


def pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}"


def pm(stats: Mapping[str, float] | None) -> str:
    """``mean ± std`` in percent."""
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    return f"{pct(stats['mean'])} ± {pct(stats.get('std', 0.0))}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (colour = share of the true class, text = counts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float)
    n = len(classes)
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = max(4.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color=colour
                    )
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def plot_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """Validation F-score and training loss per epoch, one line per fold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax_f, ax_l = fig.subplots(1, 2)
    for name, history in histories.items():
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        ax_f.plot(epochs, [100 * h["val_fscore"] for h in history], label=name)
        ax_l.plot(epochs, [h["train_loss"] for h in history], label=name)
    ax_f.set(xlabel="epoch", ylabel="validation F-score (%)", title="validation F-score")
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_f, ax_l):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_f.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


# -- training report ----------------------------------------------------------------------------


def metrics_section(cv: CVResult) -> list[str]:
    """Table 2-style summary, per-fold table and per-class F-scores of one CV result."""
    out = [
        table(
            ["", *(METRIC_TITLES[m] for m in SUMMARY_METRICS)],
            [["mean ± std over folds (%)", *(pm(cv.summary[m]) for m in SUMMARY_METRICS)]],
        ),
        "",
        table(
            ["fold", *(METRIC_TITLES[m] for m in SUMMARY_METRICS), "best epoch", "test parcels"],
            [
                [
                    f.get("fold", i) + 1,
                    *(pct(f[m]) for m in SUMMARY_METRICS),
                    f.get("best_epoch", "-"),
                    f.get("n_test", f.get("n", "-")),
                ]
                for i, f in enumerate(cv.folds)
            ],
        ),
        "",
        "Per-class F-score (%), mean ± std over the folds where the class occurs:",
        "",
        table(
            ["class", "F-score", "parcels (all folds)"],
            [
                [name, pm(cv.per_class.get(name)), int(np.sum(cv.confusion_matrix[i]))]
                for i, name in enumerate(cv.classes)
            ],
        ),
    ]
    return out


def write_train_report(
    out: str | Path,
    card: ModelCard,
    cv: CVResult | None,
    plan: LabelPlan,
    final_history: Sequence[Mapping[str, float]],
    baselines: Mapping[str, CVResult] | None = None,
) -> Path:
    """``<out>.report.md`` with the card's essentials, the CV metrics and figures beside it;
    ``baselines`` (other models on the same folds) are compared with it."""
    out = Path(out)
    stem = out.name
    folder = out.parent
    md = folder / f"{stem}.report.md"
    lines = [
        f"# Training report: {card.name}",
        "",
        f"Architecture `{card.architecture}` ({card.parameter_count:,} parameters), "
        f"{len(card.classes)} classes, input {card.input_kind}, "
        f"{len(card.provenance.get('dates', []))} dates. Model files: `{stem}.safetensors` + "
        f"`{stem}.json`.",
        "",
        "## Data",
        "",
        f"Store `{card.provenance.get('store')}`, label field "
        f"`{card.provenance.get('label_field')}`.",
        "",
        table(
            ["class", "code", "parcels"],
            [[c.name, c.code, plan.counts[c.name]] for c in card.classes],
        ),
        "",
        "Excluded parcels: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in plan.excluded.items())
        + ".",
    ]
    lines += [f"- {note}" for note in plan.notes]
    data = card.provenance.get("training_data")
    if isinstance(data, Mapping) and data.get("description"):
        lines += ["", str(data["description"])]
    if cv is not None:
        cfg = cv.config
        confusion = plot_confusion(
            cv.confusion_matrix,
            cv.classes,
            folder / f"{stem}.confusion.png",
            f"{card.architecture}: confusion summed over the test folds",
        )
        lines += [
            "",
            "## Cross-validation",
            "",
            f"{cfg.get('n_folds')}-fold cross-validation ({cfg.get('grouping')} folds, "
            f"train:val:test 3:1:1), Adam lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, "
            f"{cfg.get('epochs')} epochs, the epoch with the best validation F-score tested; "
            f"seed {cfg.get('seed')}. F-score, precision and recall are unweighted class "
            "averages.",
            "",
            *metrics_section(cv),
            "",
            f"![confusion matrix]({confusion.name})",
        ]
        if baselines:
            rows = [
                [f"{card.architecture} (this model)", *(pm(cv.summary[m]) for m in SUMMARY_METRICS)]
            ]
            rows += [
                [name, *(pm(b.summary.get(m)) for m in SUMMARY_METRICS)]
                for name, b in baselines.items()
            ]
            lines += [
                "",
                "### Baselines on the same folds",
                "",
                table(["model", *(METRIC_TITLES[m] for m in SUMMARY_METRICS)], rows),
            ]
            lines += [
                f"- {name}: {b.config.get('description', '')}".rstrip(": ")
                for name, b in baselines.items()
                if b.config.get("description")
            ]
        histories = {f"fold {f['fold'] + 1}": f.get("history") or [] for f in cv.folds}
    else:
        histories = {}
        lines += ["", "Cross-validation was not run: the card has no test metrics."]
    histories["final"] = list(final_history)
    curves = plot_curves(histories, folder / f"{stem}.curves.png")
    final = card.metrics.get("final_model", {})
    lines += [
        "",
        "## Shipped model",
        "",
        str(final.get("protocol", "")),
        f"Trained for {final.get('epochs')} epochs on all kept parcels, without validation."
        if final.get("final_fit") == "all"
        else f"Best epoch {final.get('best_epoch')}, validation F-score "
        f"{pct(final.get('val_fscore'))}.",
        "",
        f"![training curves]({curves.name})",
        "",
    ]
    write_text_atomic(md, "\n".join(lines))
    return md


# -- the paper's experiment ---------------------------------------------------------------------


def write_reproduce_report(
    out_dir: str | Path,
    results: Mapping[str, CVResult],
    shuffled: Mapping[str, CVResult],
    forest: CVResult | None,
    context: Mapping[str, Any],
) -> Path:
    """``tables.md``: Tables 2, 3 and 4 and the RF baseline on this data, beside the paper's."""
    out_dir = Path(out_dir)
    lines = [
        "# Garnot et al. (IGARSS 2019) on this data",
        "",
        f"Store `{context.get('store')}`: {context.get('n_parcels')} parcels in "
        f"{context.get('n_classes')} classes, {context.get('n_dates')} dates. "
        f"{context.get('protocol', '')}",
        "",
        f"Published numbers: {paper.DATASET}. They are a reference, not a target: the data, "
        "its classes and its size differ.",
        "",
        "## Table 2: performance metrics (%)",
        "",
    ]
    rows = []
    for name, cv in results.items():
        published = paper.TABLE2.get(name)
        rows.append(
            [paper.TITLES.get(name, name)]
            + [pm(cv.summary[m]) for m in SUMMARY_METRICS]
            + (
                [
                    f"{published.oa:.1f}",
                    f"{published.fscore:.1f}",
                    f"{published.precision:.1f}",
                    f"{published.recall:.1f}",
                ]
                if published
                else ["-"] * 4
            )
        )
    if forest is not None:
        rows.append(
            ["Random Forest"]
            + [pm(forest.summary[m]) for m in SUMMARY_METRICS]
            + ["-", f"{paper.RANDOM_FOREST_FSCORE:.1f}", "-", "-"]
        )
    lines.append(
        table(
            [
                "model",
                "OA",
                "F-score",
                "Precision",
                "Recall",
                "paper OA",
                "paper F",
                "paper P",
                "paper R",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Measured: mean ± std over the test folds. Paper: Table 2 (the RF F-score is from its "
        "section 4; the paper gives no other RF metric).",
        "",
        "## Table 3: per-class F-score (%)",
        "",
    ]
    models3 = [m for m in paper.TABLE3_MODELS if m in results] or list(results)
    classes = next(iter(results.values())).classes if results else []
    header = ["class"]
    for m in models3:
        header += [paper.TITLES.get(m, m), "paper"]
    rows = []
    for name in classes:
        row = [name]
        for m in models3:
            published = paper.table3_value(name, m)
            row += [
                pm(results[m].per_class.get(name)),
                "-" if published is None else f"{published:.1f}",
            ]
        rows.append(row)
    lines.append(table(header, rows))
    lines += [
        "",
        '"paper" columns are filled where a class has the same name as one of the paper\'s '
        "(its French LPIS nomenclature). The published Table 3:",
        "",
        table(
            ["class", *(paper.TITLES[m] for m in paper.TABLE3_MODELS)],
            [[c, *(f"{v:.1f}" for v in vals)] for c, vals in paper.TABLE3.items()],
        ),
        "",
        "## Table 4: F-score (%) on ordered and time-shuffled sequences",
        "",
    ]
    rows = []
    for name, cv_shuffled in shuffled.items():
        ordered = results.get(name)
        published = paper.TABLE4.get(name)
        o = ordered.mean("fscore") if ordered else math.nan
        s = cv_shuffled.mean("fscore")
        rows.append(
            [
                paper.TITLES.get(name, name),
                pm(ordered.summary["fscore"]) if ordered else "-",
                pm(cv_shuffled.summary["fscore"]),
                f"{100 * (s - o):+.1f}" if math.isfinite(o) and math.isfinite(s) else "-",
                *(
                    (
                        f"{published.ordered:.1f}",
                        f"{published.shuffled:.1f}",
                        f"{published.delta:+.1f}",
                    )
                    if published
                    else ("-", "-", "-")
                ),
            ]
        )
    lines.append(
        table(
            ["model", "ordered", "shuffled", "Δ", "paper ordered", "paper shuffled", "paper Δ"],
            rows,
        )
    )
    lines += ["", "## Confusion matrices (summed over the test folds)", ""]
    for name, cv in [*results.items(), *([("random_forest", forest)] if forest else [])]:
        png = plot_confusion(
            cv.confusion_matrix,
            cv.classes,
            out_dir / f"confusion_{name}.png",
            paper.TITLES.get(name, name),
        )
        lines.append(f"![{name}]({png.name})")
    lines.append("")
    md = out_dir / "tables.md"
    write_text_atomic(md, "\n".join(lines))
    return md


__all__ = [
    "metrics_section",
    "plot_confusion",
    "plot_curves",
    "table",
    "write_reproduce_report",
    "write_train_report",
]
