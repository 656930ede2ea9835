"""The GPU kit (gpu/): pack, unpack and the seed-protocol runner, on small data the test builds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `gpu` lives at the repository root, beside src/

from glioseg.data.transforms import preprocess_pipeline  # noqa: E402
from glioseg.errors import GliosegError  # noqa: E402
from glioseg.formats.kaggle3m import list_pairs, read_image, read_mask  # noqa: E402
from glioseg.formats.synthetic.lgg import generate_lgg  # noqa: E402
from glioseg.pipeline.runner import DATA_STAGES  # noqa: E402
from gpu import cv_pool, pack, seed_protocol, unpack  # noqa: E402
from tests.conftest import TINY_PARAMS  # noqa: E402


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """Synthetic kaggle_3m (3 patients x 8 slices, 64 px) plus a slice whose one-pixel tumour (odd row and
    column) nearest-neighbour halving drops."""
    root = tmp_path_factory.mktemp("lgg") / "kaggle_3m"
    generate_lgg(root, patients=3, slices=8, size=64, seed=0)
    patient = sorted(p.name for p in root.iterdir())[0]
    image = np.full((64, 64, 3), 90, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[31, 31] = 255
    tifffile.imwrite(root / patient / f"{patient}_9.tif", image, photometric="rgb")
    tifffile.imwrite(root / patient / f"{patient}_9_mask.tif", mask, photometric="minisblack")
    return root, f"{patient}_9"


def test_the_lock_pins_every_package_the_machine_lacks(tmp_path):
    pins = pack.pinned_versions(REPO / "requirements.lock")
    assert list(pins) == list(pack.MISSING_PACKAGES)
    assert pins["segmentation_models_pytorch"] == "0.6.0" and pins["albumentations"] == "2.0.8"
    command = pack.download_command(pins, tmp_path)
    assert command[command.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in command
    assert "pydantic_core==" + pins["pydantic_core"] in command
    lock = tmp_path / "requirements.lock"
    lock.write_text("albumentations==2.0.8\n")
    with pytest.raises(GliosegError, match="no pinned version for segmentation_models_pytorch"):
        pack.pinned_versions(lock)


def test_packed_slices_unpack_to_the_pixels_the_cache_stage_stores(kaggle, tmp_path):
    root, one_pixel_slice = kaggle
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"augment": {"image_size": 32}, "clean": {"min_mean_intensity": 2.0}}))
    assert pack.main(["--lgg", str(root), "--out", str(tmp_path / "kit"), "--params", str(params), "--no-wheels"]) == 0
    manifest = json.loads((tmp_path / "kit" / "manifest.json").read_text())["lgg"]
    original = list_pairs(root)
    dark = [Path(p).stem for p in original["image"] if read_image(p).mean() < 2.0]
    assert dark and manifest["left_out_as_dark_at_full_size"] == dark  # the synthetic set has dark end slices
    assert manifest["slices"] == 3 * 8 + 1 - len(dark) and manifest["patients"] == 3
    assert manifest["slices_whose_tumour_vanishes_at_this_size"] == [one_pixel_slice]
    assert manifest["kept_but_dark_at_this_size"] == []
    assert unpack.unpack_lgg(tmp_path / "kit" / "lgg.zip", tmp_path / "out") == manifest["slices"]
    resize = preprocess_pipeline(32)
    kept = original[~original["image"].map(lambda p: Path(p).stem).isin(dark)]
    unpacked = list_pairs(tmp_path / "out")
    assert len(unpacked) == len(kept)
    for before, after in zip(kept.itertuples(), unpacked.itertuples()):
        expected = resize(image=read_image(before.image), mask=read_mask(before.mask))
        np.testing.assert_array_equal(read_image(after.image), expected["image"])
        np.testing.assert_array_equal(read_mask(after.mask), expected["mask"])
        assert tifffile.imread(after.mask).max() in (0, 255)  # Kaggle's 0/255 masks


def test_lossy_encodings_and_empty_kits_are_one_line_errors(tmp_path, capsys):
    noisy = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    with pytest.raises(GliosegError, match="did not decode to the same pixels"):
        pack.encode_lossless(noisy, ".jpg")
    assert unpack.main([str(tmp_path / "empty.zip"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().startswith("error: ") and not (tmp_path / "out").exists()
    assert pack.main(["--lgg", str(tmp_path / "none"), "--out", str(tmp_path / "kit"), "--no-wheels"]) == 1
    assert not (tmp_path / "kit").exists()


def test_the_seed_protocol_runner_trains_and_evaluates_from_a_kaggle_folder(kaggle, tmp_path):
    root, _ = kaggle
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({**TINY_PARAMS, "augment": {"image_size": 32}}))  # JSON is YAML
    out = tmp_path / "result.json"
    assert (
        seed_protocol.main(
            [
                "--params",
                str(params),
                "--data",
                str(root),
                "--set",
                "epochs=1",
                "--set",
                "run.device=cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert list(result["data_stages"]) == list(DATA_STAGES) and result["epochs"] == 1
    assert result["device"] == "cpu" and result["cuda_max_allocated_mib"] is None
    assert len(result["epoch_seconds"]) == 1 and result["training_seconds"] > 0 and result["train_slices"] > 0
    assert 0.0 <= result["test"]["dice_patient_mean"] <= 1.0 and result["train"]["patients"] >= 1
    rows = result["test_per_patient"]
    assert len(rows) == result["test"]["patients"] and result["overrides"] == ["epochs=1", "run.device=cpu"]
    assert np.mean([row["dice"] for row in rows]) == pytest.approx(result["test"]["dice_patient_mean"])


def fold_result(fold: int, dice: dict[str, float], extra: tuple[str, ...] = ()) -> dict:
    return {
        "params": "/repo/profiles/cpu-real.yaml",
        "training_seconds": 10.0 * (fold + 1),
        "overrides": ["split.folds=2", f"split.fold={fold}", "run.threads=1", *extra],
        "test_per_patient": [{"patient": name, "dice": value} for name, value in dice.items()],
    }


def test_fold_results_pool_per_configuration_over_all_patients(tmp_path, capsys):
    results = [
        fold_result(0, {"a": 0.9, "b": 0.7}),
        fold_result(1, {"c": 0.5, "d": 0.3}),
        fold_result(1, {"a": 0.0, "b": 0.0}, ("epochs=5",)),
        fold_result(0, {"c": 1.0, "d": 1.0}, ("epochs=5",)),
    ]
    table = cv_pool.pool(results).set_index("configuration")
    assert list(table.index) == ["cpu-real.yaml", "cpu-real.yaml epochs=5"]
    assert table.loc["cpu-real.yaml", "Dice per patient"] == pytest.approx(0.6)
    assert table.loc["cpu-real.yaml epochs=5", "Dice per patient"] == pytest.approx(0.5)
    assert table["patients"].tolist() == [4, 4] and table["training s per fold"].tolist() == [15.0, 15.0]
    low, high = table.loc["cpu-real.yaml", ["95% CI low", "95% CI high"]]
    assert 0.3 <= low < 0.6 < high <= 0.9
    with pytest.raises(GliosegError, match="1 fold result"):
        cv_pool.pool(results[:1])
    with pytest.raises(GliosegError, match="more than one fold: a"):
        cv_pool.pool([fold_result(0, {"a": 0.9}), fold_result(1, {"a": 0.5})])
    stale = tmp_path / "old.json"
    stale.write_text(json.dumps({"params": "p.yaml", "overrides": [], "training_seconds": 1.0}))
    assert cv_pool.main([str(stale)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {stale}: not a seed-protocol result with per-patient rows (no test_per_patient)"
    )


FAKE_PYTHON = """#!/usr/bin/env bash
# gpu.cv_pool runs for real; gpu.seed_protocol is replaced by a result that echoes its arguments.
if [ "$2" = gpu.cv_pool ]; then exec {python} "$@"; fi
exec {python} -c '
import json, sys
args = sys.argv[1:]
sets = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
fold = int(next(item for item in sets if item.startswith("split.fold=")).partition("=")[2])
result = {{"params": args[args.index("--params") + 1], "overrides": sets, "training_seconds": 1.0,
           "test_per_patient": [{{"patient": f"p{{fold}}", "dice": fold / 10}}]}}
open(args[args.index("--json") + 1], "w").write(json.dumps(result))
print("fold", fold, "done")
' "${{@:3}}"
"""


def test_cross_validate_runs_every_fold_of_every_configuration_and_pools_them(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    candidates = tmp_path / "candidates.txt"
    candidates.write_text(
        "# a comment\nprofile profiles/cpu-real.yaml\n\nsmall profiles/cpu-real.yaml epochs=3 lr=0.002\n"
    )
    results = tmp_path / "results"
    done = subprocess.run(
        ["bash", str(REPO / "gpu/cross_validate.sh"), str(candidates), "/data", str(results), "3"],
        env={**os.environ, "PYTHON": str(fake), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(p.name for p in results.glob("*.json")) == [
        f"{name}-f{f}.json" for name in ("profile", "small") for f in range(5)
    ]
    small = json.loads((results / "small-f3.json").read_text())
    assert small["overrides"] == ["split.folds=5", "split.fold=3", "run.threads=1", "epochs=3", "lr=0.002"]
    assert json.loads((results / "profile-f0.json").read_text())["overrides"][-1] == "run.threads=1"
    assert done.stdout.count("done") == 10 and "cpu-real.yaml epochs=3 lr=0.002" in done.stdout
    table = cv_pool.pool([json.loads(p.read_text()) for p in sorted(results.glob("*.json"))])
    assert table.set_index("configuration")["Dice per patient"].to_dict() == pytest.approx(
        {"cpu-real.yaml": 0.2, "cpu-real.yaml epochs=3 lr=0.002": 0.2}
    )
    assert table["patients"].tolist() == [5, 5]
