"""The throughput benchmark (benchmarks/run.py) runs end to end on a tiny configuration."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root, beside src/

from benchmarks.run import Profile, load_pairs, main, run_profile, selected_profiles, table  # noqa: E402
from glioseg.config.schema import parse_params  # noqa: E402
from glioseg.device import cpu_has_native_bf16  # noqa: E402

TINY = {
    "batch_size": 4,
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "run": {"device": "cpu", "threads": 1},
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    pairs, _ = load_pairs("synthetic", root, max_slices=12)
    return pairs


def test_both_loops_report_throughput(pairs, tmp_path):
    profile = Profile("tiny", "test profile")
    result = run_profile(profile, parse_params(TINY), pairs, tmp_path, steps=2, warmup=1, rounds=2, isolate=False)
    for loop in ("naive", "glioseg"):
        r = result[loop]
        assert r["images"] == 2 * 4 and r["steps"] == 2 and r["rounds"] == 2 and r["warmup_steps"] == 1
        assert len(r["images_per_s_per_round"]) == 2 and min(r["images_per_s_per_round"]) > 0
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert r["image_size"] == 32 and r["batch_size"] == 4
        assert r["peak_rss_mib"] > 0 and r["torch"]
    assert result["naive"]["precision"] == "fp32"
    assert result["glioseg"]["precision"] == ("bf16 autocast" if cpu_has_native_bf16() else "fp32")
    assert result["naive"]["memory_format"] == "contiguous"
    assert result["glioseg"]["memory_format"] == "channels_last"
    assert result["speedup"] > 0 and result["speedup_median_of_rounds"] > 0
    assert result["cache_load_s"] >= 0 and result["slices"] == 12
    assert "| tiny | glioseg |" in table([result])
    assert "naive_reference_batch" not in result  # no reference batch: two loops only


def test_reference_batch_adds_a_naive_loop_at_that_batch(pairs, tmp_path):
    profile = Profile("tiny", "test profile", reference_batch=2)
    result = run_profile(profile, parse_params(TINY), pairs, tmp_path, steps=2, warmup=0, rounds=2, isolate=False)
    reference = result["naive_reference_batch"]
    assert reference["batch_size"] == 2 and reference["images"] == 2 * 2
    assert result["naive"]["batch_size"] == 4 and result["glioseg"]["batch_size"] == 4
    expected = result["glioseg"]["images_per_s"] / reference["images_per_s"]
    assert result["speedup_vs_reference_batch"]["overall"] == pytest.approx(expected)
    rows = table([result]).splitlines()
    assert sum(row.startswith("| tiny |") for row in rows) == 3
    assert any(row.startswith("| tiny | naive, seed batch |") and "| 2 |" in row for row in rows)


def test_cli_rejects_unknown_profile(capsys):
    with pytest.raises(SystemExit):
        main(["--profile", "tpu"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_gpu_table_runs_where_cuda_is_and_is_left_out_with_a_note_elsewhere():
    assert selected_profiles("all", cuda=True) == (["default", "cpu", "gpu-10", "gpu-64"], None)
    names, note = selected_profiles("all", cuda=False)
    assert names == ["default", "cpu"] and "no CUDA device" in note and "gpu-64" in note
    assert selected_profiles("both", cuda=False) == (["default", "cpu"], None)
    assert selected_profiles("gpu", cuda=True) == (["gpu-10", "gpu-64"], None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_asking_for_the_gpu_table_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["--profile", "gpu", "--json", str(tmp_path / "out.json")]) == 1
    assert capsys.readouterr().err.strip() == "error: --profile gpu: needs a CUDA device, and torch sees none"
    assert not (tmp_path / "out.json").exists()


def test_gpu_profiles_are_the_seed_protocol_at_batch_10_and_64_on_cuda():
    from benchmarks.run import PROFILES, SEED_PROTOCOL, profile_params
    from glioseg.config.compose import compose_params

    base = compose_params(REPO / "profiles/cpu-real.yaml")
    for name, batch in (("gpu-10", 10), ("gpu-64", 64)):
        params = profile_params(PROFILES[name], base, device="cpu")
        assert params.run.device == "cuda" and params.batch_size == batch
        assert params.augment.image_size == 128 and params.model.encoder == SEED_PROTOCOL["model"]["encoder"]
    assert profile_params(PROFILES["cpu"], base, device="cpu").run.device == "cpu"


def test_cli_writes_json(tmp_path, monkeypatch):
    """The real CLI path, shrunk: the cpu profile at its params with a tiny params file."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(TINY))  # JSON is YAML
    out = tmp_path / "out.json"
    monkeypatch.setattr("benchmarks.run.SYNTHETIC", {"patients": 2, "slices": 6, "size": 64, "seed": 0})
    assert (
        main(
            [
                "--profile",
                "cpu",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--no-isolate",
                "--params",
                str(params),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    (result,) = report["profiles"]
    assert result["naive"]["images_per_s"] > 0 and result["glioseg"]["images_per_s"] > 0
    assert report["machine"]["torch"] and report["command"].startswith("python -m benchmarks.run")


def test_cli_reports_missing_data_in_one_line(tmp_path, capsys):
    assert main(["--profile", "cpu", "--data", str(tmp_path / "nowhere"), "--json", str(tmp_path / "out.json")]) == 1
    assert capsys.readouterr().err.strip().startswith("error: ")


def test_pipeline_benchmark_stops_with_the_failing_command(tmp_path):
    from benchmarks.pipeline import timed

    env = {"PATH": "/usr/bin:/bin"}
    assert timed(["true"], tmp_path, env, tmp_path / "log") >= 0
    with pytest.raises(SystemExit, match=r"error: sh -c 'echo broken; exit 3' failed .*exit 3\):\nbroken"):
        timed(["sh", "-c", "echo broken; exit 3"], tmp_path, env, tmp_path / "log")
