"""The report stage: reports/report.md and the figures it embeds, from the pipeline's own outputs.

Every number in the two comparison tables comes from a run the pipeline trained (the ``train``
stage or a ``sweep_train@NAME`` stage) and names its MLflow run. "Dice" in the tables is the mean
per-patient Dice (3-D volumes rebuilt from slices), the measure Buda et al. report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.reader import read_slices
from glioseg.errors import DataError
from glioseg.evaluation.learning import learning_failure
from glioseg.figures import display_image, learning_curves, overlay_grid, save_png
from glioseg.io import read_json, write_text
from glioseg.metrics import COUNT_KEYS

# Seed 004 (student report), Tables 1 and 2: their numbers, shown beside ours and labelled as theirs.
SEED_LOSS_TABLE = {"wbce": (0.80, 0.77), "dice": (0.75, 0.73), "combined": (0.83, 0.85)}
SEED_LR_TABLE = {5e-5: (70, 0.83, 0.84), 1e-4: (50, 0.83, 0.85), 5e-4: (50, 0.82, 0.79)}
LOSS_LABELS = {"wbce": "weighted BCE", "dice": "Dice", "combined": "combined (wBCE + Dice)"}


@dataclass(frozen=True)
class RunResult:
    name: str
    loss: str
    lr: float
    epochs: int
    run_id: str
    train: dict[str, float]
    test: dict[str, float]


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found (run `dvc repro` to produce it)")
    return read_json(path)


def collect_runs(params: Params) -> list[RunResult]:
    """The main run (train + evaluate stages) and every sweep run found under runs/."""
    main_metrics = _read(paths.TEST_METRICS)
    main = RunResult(
        name="train",
        loss=params.loss,
        lr=params.lr,
        epochs=params.epochs,
        run_id=_read(paths.TRAIN_METRICS).get("mlflow_run_id", ""),
        train=main_metrics["train"],
        test=main_metrics["test"],
    )
    runs = [main]
    for name in params.sweeps:
        data = _read(paths.sweep_dir(name) / "metrics.json")
        runs.append(
            RunResult(
                name,
                data["loss"],
                float(data["lr"]),
                int(data["epochs"]),
                data["mlflow_run_id"],
                data["train"],
                data["test"],
            )
        )
    return runs


RUN_COLUMNS = [
    "train Dice",
    "test Dice",
    "test Dice 95% CI",
    "test IoU",
    "test Dice (tumour slices)",
    "MLflow run",
    "learned",
]


def interval_text(summary: dict, metric: str) -> str:
    """``[low, high]`` of the metric's bootstrap interval over patients, or empty when the summary has none."""
    interval = summary.get("ci95", {}).get(metric)
    return f"[{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""


def _row(run: RunResult | None) -> dict[str, object]:
    """A table row's run columns; all missing (NaN) when no run has the row's configuration."""
    if run is None:
        return dict.fromkeys(RUN_COLUMNS, np.nan)
    failure = learning_failure(
        run.train.get("dice_positive_slice_mean", np.nan), run.train.get("sensitivity"), run.train.get("specificity")
    )
    values = [
        run.train["dice_patient_mean"],
        run.test["dice_patient_mean"],
        interval_text(run.test, "dice_patient_mean"),
        run.test["iou_patient_mean"],
        run.test.get("dice_positive_slice_mean", np.nan),
        f"`{run.run_id}` ({run.name})",
        "yes" if failure is None else f"**no**: {failure}",
    ]
    return dict(zip(RUN_COLUMNS, values))


def unique_by(runs: list[RunResult], key) -> dict:
    """First run for each key (the main run comes first, so it wins over an identical sweep)."""
    chosen: dict = {}
    for run in runs:
        chosen.setdefault(key(run), run)
    return chosen


def loss_table(runs: list[RunResult], params: Params) -> pd.DataFrame:
    same_schedule = [r for r in runs if np.isclose(r.lr, params.lr) and r.epochs == params.epochs]
    by_loss = unique_by(same_schedule, lambda r: r.loss)
    rows = []
    for loss, label in LOSS_LABELS.items():
        theirs = SEED_LOSS_TABLE[loss]
        rows.append(
            {
                "loss": label,
                **_row(by_loss.get(loss)),
                "seed 004 train Dice (theirs)": theirs[0],
                "seed 004 test Dice (theirs)": theirs[1],
            }
        )
    return pd.DataFrame(rows)


def lr_table(runs: list[RunResult]) -> pd.DataFrame:
    combined = unique_by([r for r in runs if r.loss == "combined"], lambda r: (r.lr, r.epochs))
    rows = [{"lr": f"{lr:g}", "epochs": epochs, **_row(run)} for (lr, epochs), run in sorted(combined.items())]
    return pd.DataFrame(rows, columns=["lr", "epochs", *RUN_COLUMNS])  # no combined-loss run: an empty table


def seed_lr_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"lr": f"{lr:g}", "epochs": epochs, "train Dice": train, "test Dice": test}
            for lr, (epochs, train, test) in SEED_LR_TABLE.items()
        ]
    )


def data_summary(labels: pd.DataFrame, split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    def count(name: str, rows: pd.DataFrame) -> dict[str, object]:
        positive = int(rows["diagnosis"].sum())
        return {
            "slices": name,
            "total": len(rows),
            "positive": positive,
            "negative": len(rows) - positive,
            "patients": rows["patient"].nunique(),
        }

    counts = pd.DataFrame(
        [
            count("all pairs", labels),
            count("removed (dark)", labels[labels["kept"] == 0]),
            count("kept", labels[labels["kept"] == 1]),
        ]
    )
    sizes = (
        split.groupby("subset")
        .agg(patients=("patient", "nunique"), slices=("slice", "size"), positive=("diagnosis", "sum"))
        .reindex(["train", "val", "test"])
        .reset_index()
    )
    return counts, sizes


def removed_examples(removed: pd.DataFrame, params: Params, count: int = 4) -> plt.Figure | None:
    if removed.empty:
        return None
    shown = removed.sort_values("mean_intensity").head(count).reset_index(drop=True)
    slices = list(read_slices(shown, params, desc="report"))
    panels = [display_image(image) for _, image, _ in slices]
    titles = [f"{r.patient} #{r.slice}\nmean {r.mean_intensity:.2f}" for r, _, _ in slices]
    return overlay_grid(panels, titles, columns=len(panels))


def class_table(labels: pd.DataFrame) -> pd.DataFrame | None:
    """Pixels and slices per tumour class in the kept slices (multi-class datasets)."""
    columns = [c for c in labels.columns if c.endswith("_pixels") and c != "tumour_pixels"]
    if not columns:
        return None
    kept = labels[labels["kept"] == 1]
    return pd.DataFrame(
        [
            {"class": c.removesuffix("_pixels"), "pixels": int(kept[c].sum()), "slices": int((kept[c] > 0).sum())}
            for c in columns
        ]
    )


REGION_METRICS = (
    "dice_patient_mean",
    "iou_patient_mean",
    "dice_pooled",
    "precision",
    "sensitivity",
    "hd95_patient_mean",
    "hd95_missed_tumour",
    "hd95_false_positive",
)


def region_table(metrics: dict) -> pd.DataFrame | None:
    """Per evaluation region (BraTS: whole tumour, tumour core, enhancing): test metrics and train Dice."""
    regions = metrics["test"].get("regions")
    if not regions:
        return None
    rows = []
    for region, values in regions.items():
        row = {"region": region, **{f"test {k}": values.get(k, np.nan) for k in REGION_METRICS}}
        train_region = metrics["train"].get("regions", {}).get(region, {})
        row["train dice_patient_mean"] = train_region.get("dice_patient_mean", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_plot(loss: pd.DataFrame, lr: pd.DataFrame) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, table, label in ((axes[0], loss, "loss"), (axes[1], lr, "lr")):
        x = np.arange(len(table))
        axis.bar(x - 0.2, table["train Dice"], 0.4, label="train")
        axis.bar(x + 0.2, table["test Dice"], 0.4, label="test")
        axis.set_xticks(x, table[label].astype(str), rotation=15)
        axis.set_ylim(0, 1)
        axis.set_ylabel("Dice (per patient)")
        axis.legend()
    figure.tight_layout()
    return figure


def metrics_table(metrics: dict) -> pd.DataFrame:
    keys = sorted((set(metrics["test"]) | set(metrics["train"])) - {"regions", "protocol", "ci95"})

    def value(subset: str, key: str) -> object:
        number = metrics[subset].get(key, np.nan)
        return str(int(number)) if key in INTEGER_KEYS and not np.isnan(number) else float(number)

    return pd.DataFrame(
        {
            "metric": keys,
            "test": [value("test", k) for k in keys],
            "test 95% CI": [interval_text(metrics["test"], k) for k in keys],
            "train": [value("train", k) for k in keys],
        }
    )


# Metrics shown as integers: the evaluation's counts and the training summary's.
INTEGER_KEYS = {*COUNT_KEYS, "epochs", "total", "positive", "negative"}


def _cell(value: object) -> object:
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:.3f}"
    return value


def _md(frame: pd.DataFrame) -> str:
    """Markdown with 3-decimal floats; strings such as learning rates are printed as they are."""
    return frame.astype(object).map(_cell).to_markdown(index=False, disable_numparse=True)


def build_report(params: Params) -> Path:
    labels = pd.read_csv(paths.LABELS)
    split = pd.read_csv(paths.SPLIT)
    removed = labels[labels["kept"] == 0].merge(
        pd.read_csv(paths.REMOVED)[["patient", "slice", "mean_intensity"]], on=["patient", "slice"]
    )
    history = pd.read_csv(paths.TRAIN_HISTORY)
    runs = collect_runs(params)
    counts, sizes = data_summary(labels, split)
    classes = class_table(labels)
    test_metrics = _read(paths.TEST_METRICS)
    regions = region_table(test_metrics)
    losses, lrs = loss_table(runs, params), lr_table(runs)
    figures = paths.FIGURES
    save_png(figures / "learning_curves.png", learning_curves(history, "main run (train stage)"))
    save_png(figures / "comparison.png", comparison_plot(losses, lrs))
    removed_figure = removed_examples(removed, params)
    if removed_figure is not None:
        save_png(figures / "removed_examples.png", removed_figure)
    evaluation = sorted(p.name for p in paths.EVALUATION.glob("*.png"))
    text = "\n".join(
        [
            "# glioseg report",
            "",
            f"Dataset {params.dataset}, source `{params.data.source}`; split by {params.split.by}; image size "
            f"{params.augment.image_size}; encoder {params.model.encoder}; main run: loss {params.loss}, "
            f"lr {params.lr:g}, {params.epochs} epochs, batch {params.batch_size}.",
            "",
            "Dice below is the mean per-patient Dice (volumes rebuilt from slices) unless named otherwise;",
            "`metrics/test.json` has every definition (per slice, tumour slices only, pooled, per patient).",
            "Its 95% interval is a bootstrap over the test patients (`protocol.confidence_interval`): with few",
            "test patients it is wide, and differences between rows inside it are not evidence.",
            "A row whose `learned` reads **no** is a run that did not learn (its training slices with tumour",
            "score a Dice near 0): its figures are no result; rerun it with another lr or more epochs.",
            "HD95 means count every patient: a missed tumour, or a tumour predicted in a patient without one,",
            "scores the diagonal of that patient's evaluation grid (`protocol.hd95` in `metrics/test.json`).",
            *(
                ["With several evaluation regions (BraTS) each Dice is the mean over the regions."]
                if len(params.regions()) > 1
                else []
            ),
            "",
            "## Data",
            "",
            _md(counts),
            "",
            *(
                ["Tumour classes (kept slices, after the label map):", "", _md(classes), ""]
                if classes is not None
                else []
            ),
            "Split (by " + params.split.by + "):",
            "",
            _md(sizes),
            "",
            *(["![removed dark slices](figures/removed_examples.png)", ""] if removed_figure is not None else []),
            "## Learning curves",
            "",
            "![learning curves](figures/learning_curves.png)",
            "",
            "![augmentation preview](../data/augment_preview.png)",
            "",
            "## Test metrics (main run)",
            "",
            _md(metrics_table(test_metrics)),
            "",
            *(
                [
                    "Per region (the summary above averages them; `onehot_*` and `mean_iou_classes` are the",
                    "seeds' Keras pixel metrics, background included):",
                    "",
                    _md(regions),
                    "",
                ]
                if regions is not None
                else []
            ),
            *[f"![{name}](evaluation/{name})" for name in evaluation],
            "",
            f"## Table 1: loss configuration (lr {params.lr:g}, {params.epochs} epochs)",
            "",
            _md(losses),
            "",
            "## Table 2: learning rate (combined loss)",
            "",
            _md(lrs),
            "",
            "Seed 004's Table 2 (theirs, for comparison):",
            "",
            _md(seed_lr_table()),
            "",
            "![comparison](figures/comparison.png)",
            "",
            "Seed 004's numbers are theirs: 128 px, 50-70 epochs, a slice-level (leaky) split and a",
            "per-image Dice; ours come from the runs named in each row, on the data and params above.",
            "",
        ]
    )
    write_text(paths.REPORT, text)
    write_text(
        figures / "tables.json",
        json.dumps({"loss": losses.to_dict("records"), "lr": lrs.to_dict("records")}, indent=2, default=str),
    )
    return paths.REPORT


def run(params: Params) -> dict[str, str]:
    """The report stage: reports/report.md and its figures."""
    return {"report": str(build_report(params))}
