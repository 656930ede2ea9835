"""The ceiling benchmark (benchmarks/ceiling.py): variants, time shares and the CLI, at tiny scale."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root, beside src/

from benchmarks.ceiling import (  # noqa: E402
    COMPILED,
    VARIANTS,
    available_variants,
    main,
    measure,
    table,
    time_shares,
)
from glioseg.config.schema import parse_params  # noqa: E402

TINY = {
    "batch_size": 2,
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "run": {"device": "cpu", "threads": 1},
}


def test_time_shares_split_a_step_into_convolution_batch_norm_optimiser_and_the_rest():
    events = [
        ("aten::convolution_backward", 40.0, 45.0),
        ("aten::mkldnn_convolution", 20.0, 20.0),
        ("aten::native_batch_norm", 10.0, 10.0),
        ("Optimizer.step#Adam.step", 2.0, 15.0),  # its aten ops' self time (13) is in the events below
        ("aten::_fused_adam_", 13.0, 13.0),
        ("aten::add_", 15.0, 15.0),
    ]
    shares = time_shares(events)
    assert shares == {"convolution": 0.6, "batch_norm": 0.1, "optimiser": 0.15, "other": 0.15}
    assert time_shares([]) == {"convolution": 0.0, "batch_norm": 0.0, "optimiser": 0.0, "other": 0.0}


def test_bf16_variants_run_only_with_native_bf16_and_compile_only_when_asked():
    assert [v.name for v in available_variants(native_bf16=False)] == ["naive", "channels_last", "fused_adam"]
    assert available_variants(native_bf16=True) == list(VARIANTS)
    assert available_variants(native_bf16=True, compiled=True)[-1] == COMPILED
    naive, glioseg = VARIANTS[0], VARIANTS[-1]
    assert (naive.precision, naive.memory_format, naive.adam) == ("fp32", "contiguous", "per-tensor")
    assert (glioseg.precision, glioseg.memory_format, glioseg.adam) == ("bf16 autocast", "channels_last", "fused")


def test_measure_times_every_variant_in_rounds_against_the_naive_step():
    variants = available_variants(native_bf16=False)
    results = measure(parse_params(TINY), variants, steps=3, warmup=1, rounds=2, profiled_steps=1)
    assert [r["name"] for r in results] == ["naive", "channels_last", "fused_adam"]
    for r in results:
        assert r["images"] == 3 * 2 and len(r["images_per_s_per_round"]) == 2 and r["warmup_steps"] == 1
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert sum(r["time_shares"].values()) == pytest.approx(1.0, abs=1e-3)
        assert r["time_shares"]["convolution"] > 0.2  # a U-Net step is mostly convolutions
        assert r["over_naive"] == pytest.approx(r["images_per_s"] / results[0]["images_per_s"])
    assert results[0]["over_naive"] == 1.0 and results[0]["over_naive_median_of_rounds"] == 1.0
    rows = table(results).splitlines()
    assert len(rows) == 2 + 3 and rows[2].startswith("| naive | fp32 | contiguous | per-tensor |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_measure_rejects_fewer_steps_than_rounds():
    with pytest.raises(ValueError, match="steps >= rounds"):
        measure(parse_params(TINY), list(VARIANTS[:1]), steps=1, warmup=0, rounds=2, profiled_steps=1)


def test_cli_writes_json(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(TINY))  # JSON is YAML
    out = tmp_path / "ceiling.json"
    assert (
        main(
            [
                "--params",
                str(params),
                "--steps",
                "2",
                "--rounds",
                "2",
                "--warmup",
                "0",
                "--profiled-steps",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.ceiling") and report["image_size"] == 32
    assert report["variants"][0]["name"] == "naive" and report["machine"]["torch"]


def test_cli_reports_a_bad_params_file_in_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("batch_size: -3\n")
    assert main(["--params", str(params), "--json", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "batch_size" in err and "\n" not in err
    assert not (tmp_path / "out.json").exists()
