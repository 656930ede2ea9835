"""Training throughput, naive reference loop vs glioseg's Trainer: ``python -m benchmarks.run``.

The CPU table (profiles ``default``, the seed protocol, and ``cpu``, the CPU profile) runs on
any machine; the GPU table (the seed protocol at batch 10 and 64) where torch sees CUDA. For
each profile the data (synthetic by default: generate_lgg, 6 patients x 20 slices at 256 px, in
a temporary folder) are used twice, side by side:

- naive: TIFs decoded per item, per-sample albumentations, DataLoader(num_workers=0), fp32;
- glioseg: the array cache built once with ``glioseg.data.build.build_cache``, saved as the
  pipeline's ``.npz`` and loaded back, then ``glioseg.training.loop.Trainer.train_epoch()``.

Each loop runs in its own spawned process (unless ``--no-isolate``), so its peak RSS is its own;
after their warm-up steps the two alternate timed rounds, so load from other processes on the
machine falls on both. Prints a Markdown table and writes everything (with device, torch
version, batch size, image size and precision beside every figure) to ``--json``.
See benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.loops import SESSIONS, serve
from benchmarks.machine import load_average, machine_info, write_report
from glioseg.config.compose import compose_params
from glioseg.config.schema import Params, parse_params
from glioseg.data.build import build_cache
from glioseg.data.cache import load_cache, save_cache
from glioseg.data.transforms import channel_stats
from glioseg.device import DEVICES, select_device
from glioseg.errors import ConfigError, GliosegError
from glioseg.formats.kaggle3m import list_pairs, read_mask
from glioseg.formats.synthetic.lgg import generate_lgg

REFERENCE = "naive_reference_batch"  # the naive loop at the profile's reference (seed) batch size
SYNTHETIC = {"patients": 6, "slices": 20, "size": 256, "seed": 0}

# The seed-004 protocol (profiles/seed-gpu.yaml): 128 px, batch 10, resnet34, full decoder, lr 1e-4.
SEED_PROTOCOL = {
    "lr": 1e-4,
    "batch_size": 10,
    "augment": {"image_size": 128},
    "model": {"encoder": "resnet34", "encoder_depth": 5, "decoder_channels": [256, 128, 64, 32, 16]},
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # composed on top of the --params profile
    steps: int = 10  # timed optimiser steps per loop...
    warmup: int = 1  # ...after this many untimed ones
    rounds: int = 3  # timed steps are split into this many rounds, the loops taking turns
    # The naive loop also runs at this batch size (the seeds' 10) when the profile's differs.
    reference_batch: int | None = None
    device: str | None = None  # "cuda" for the GPU table; None: the --device option


# Steps chosen so `--profile both` takes ~1.5 minutes on 2 idle CPU cores (naive loops: seed
# protocol ~10 images/s, CPU profile ~40 images/s at 96 px) and stays within minutes when another
# job competes for the cores (the seed protocol then drops to ~1.5-2.5 images/s).
PROFILES = {
    "default": Profile(
        "default",
        "seed protocol: 128 px, resnet34, decoder 256-128-64-32-16, batch 10",
        SEED_PROTOCOL,
        steps=8,
        warmup=1,
        rounds=4,
    ),
    "cpu": Profile(
        "cpu",
        "CPU profile (profiles/cpu-real.yaml)",
        {},
        steps=30,
        warmup=2,
        rounds=5,
        reference_batch=SEED_PROTOCOL["batch_size"],
    ),
    # The GPU table: the seed protocol at the seeds' batch and at 64, on CUDA. More warm-up steps
    # for cuDNN's algorithm search and the CUDA context.
    "gpu-10": Profile(
        "gpu-10", "seed protocol on CUDA, batch 10", SEED_PROTOCOL, steps=100, warmup=10, rounds=5, device="cuda"
    ),
    "gpu-64": Profile(
        "gpu-64",
        "seed protocol on CUDA, batch 64",
        SEED_PROTOCOL | {"batch_size": 64},
        steps=40,
        warmup=5,
        rounds=5,
        device="cuda",
    ),
}
PROFILE_SETS = {
    "both": ["default", "cpu"],
    "gpu": ["gpu-10", "gpu-64"],
    "all": ["default", "cpu", "gpu-10", "gpu-64"],
}
# The real LGG training split (85 shared patients, seed 42: docs/results.md), for projected epoch times.
REAL_TRAIN_SLICES = 2193


def profile_params(profile: Profile, base: Mapping[str, Any], device: str | None = None) -> Params:
    """``base`` (the composed --params tree) with the benchmark profile's overrides and device composed on."""
    device = profile.device or device
    overrides = [f"run.device={device}"] if device is not None else []
    return parse_params(compose_params(base, profile.overrides, overrides=overrides))


def selected_profiles(choice: str, cuda: bool) -> tuple[list[str], str | None]:
    """The profiles ``--profile choice`` runs, and a note when GPU profiles are left out for want of CUDA.

    ``all`` runs the GPU profiles only where CUDA is present; naming ``gpu`` (or one of its
    profiles) without CUDA is an error.
    """
    names = PROFILE_SETS.get(choice, [choice])
    gpu = [name for name in names if PROFILES[name].device == "cuda"]
    if not gpu or cuda:
        return names, None
    if choice != "all":
        raise ConfigError(f"--profile {choice}: needs a CUDA device, and torch sees none")
    note = "no CUDA device: the GPU table (" + ", ".join(gpu) + ") is left out"
    return [name for name in names if name not in gpu], note


class Loop:
    """One loop's session, in a fresh spawned process (its own peak RSS and CUDA context) or here."""

    def __init__(self, kind: str, args: tuple, isolate: bool):
        self.kind, self.isolate = kind, isolate
        if isolate:
            context = mp.get_context("spawn")
            self.conn, child = context.Pipe()
            self.process = context.Process(target=serve, args=(child, kind, args), daemon=True)
            self.process.start()
            child.close()
            self.ready = False
        else:
            self.session = SESSIONS[kind](*args)
            self.ready = True

    def _reply(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.kind} loop's process died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"the {self.kind} loop failed in its process:\n{value}")
        return value

    def call(self, method: str, *args: Any) -> Any:
        if not self.isolate:
            return getattr(self.session, method)(*args)
        if not self.ready:  # the session is built when the child starts
            self._reply()
            self.ready = True
        self.conn.send((method, *args))
        return self._reply()

    def close(self) -> None:
        if self.isolate:
            self.conn.close()
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join()


def split_steps(steps: int, rounds: int) -> list[int]:
    """``steps`` as ``rounds`` near-equal positive chunks (fewer rounds if steps < rounds)."""
    rounds = max(1, min(rounds, steps))
    return [steps // rounds + (1 if i < steps % rounds else 0) for i in range(rounds)]


def slice_frames(pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """labels and split frames as the pipeline would have them, every slice in 'train'."""
    labels = pairs[["patient", "slice", "image", "mask"]].astype({"image": str, "mask": str})
    diagnosis = [int(read_mask(path).any()) for path in labels["mask"]]
    split = labels[["patient", "slice"]].assign(diagnosis=diagnosis, subset="train")
    return labels, split


def run_profile(
    profile: Profile,
    params: Params,
    pairs: pd.DataFrame,
    workdir: Path,
    *,
    steps: int | None = None,
    warmup: int | None = None,
    rounds: int | None = None,
    isolate: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Cache build/load timings and the loops of one profile; the result dict ``run`` writes.

    The loops are the naive one at the profile's batch size, the naive one at the profile's
    reference batch size where that differs, and glioseg's. Their sessions start together (in
    their own processes when ``isolate``), run their warm-up steps, then take timed rounds in
    turn, each loop leading one round after another, so a burst of load from another process
    lands on all of them rather than on one.
    """
    steps = profile.steps if steps is None else steps
    warmup = profile.warmup if warmup is None else warmup
    rounds = profile.rounds if rounds is None else rounds
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, rounds >= 1; got {steps}, {warmup}, {rounds}")
    labels, split = slice_frames(pairs)
    size = params.augment.image_size

    log(f"[{profile.name}] cache: decoding and resizing {len(split)} slices to {size} px")
    began = time.perf_counter()
    arrays = build_cache(labels, split, params)
    build_seconds = time.perf_counter() - began
    cache_path = workdir / f"slices-{profile.name}-{size}.npz"
    save_cache(arrays, cache_path)
    load_times = []
    for _ in range(3):
        began = time.perf_counter()
        load_cache(cache_path)
        load_times.append(time.perf_counter() - began)
    mean, std = channel_stats(arrays.images)

    config = params.model_dump(mode="json")
    pair_list = list(zip(labels["image"], labels["mask"]))
    chunks = split_steps(steps, rounds)
    log(
        f"[{profile.name}] {params.model.encoder} at {size} px, batch {params.batch_size}: "
        f"{warmup} warm-up + {steps} timed steps per loop in rounds of {chunks}"
    )
    loops = {"naive": Loop("naive", (config, pair_list, mean, std), isolate)}
    reference_batch = profile.reference_batch
    if reference_batch is not None and reference_batch != params.batch_size:
        reference_config = config | {"batch_size": reference_batch}
        loops[REFERENCE] = Loop("naive", (reference_config, pair_list, mean, std), isolate)
    loops["glioseg"] = Loop("glioseg", (config, str(cache_path)), isolate)
    try:
        for loop in loops.values():
            loop.call("warmup", warmup)
        names = list(loops)
        for i, chunk in enumerate(chunks):
            speeds = {}
            for name in names[i % len(names) :] + names[: i % len(names)]:  # each loop leads in turn
                loops[name].call("prepare", chunk)
                speeds[name] = loops[name].call("run", chunk)
            log(
                f"[{profile.name}]   round {i + 1}/{len(chunks)}: "
                + ", ".join(f"{name} {speed:.2f}" for name, speed in speeds.items())
                + " images/s"
            )
        results = {name: loop.call("result") | {"isolated": isolate} for name, loop in loops.items()}
    finally:
        for loop in loops.values():
            loop.close()
    speedups = {name: speedup(results["glioseg"], results[name]) for name in results if name != "glioseg"}
    return {
        "profile": profile.name,
        "description": profile.description,
        "slices": len(arrays),
        "image_size": size,
        "batch_size": params.batch_size,
        "encoder": params.model.encoder,
        "decoder_channels": list(params.model.decoder_channels),
        "cache_build_s": round(build_seconds, 3),
        "cache_load_s": round(statistics.median(load_times), 4),
        "cache_mib": round(cache_path.stat().st_size / 2**20, 2),
        **results,
        "epoch_s_projected": {name: round(REAL_TRAIN_SLICES / r["images_per_s"], 1) for name, r in results.items()},
        "speedup": speedups["naive"]["overall"],
        "speedup_per_round": speedups["naive"]["per_round"],
        "speedup_median_of_rounds": speedups["naive"]["median_of_rounds"],
        **({"speedup_vs_reference_batch": speedups[REFERENCE]} if REFERENCE in speedups else {}),
    }


def speedup(glioseg: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """glioseg's images/s over a naive loop's: overall, and per round (rounds pair loops close in time)."""
    paired = [g / n for g, n in zip(glioseg["images_per_s_per_round"], naive["images_per_s_per_round"])]
    return {
        "overall": glioseg["images_per_s"] / naive["images_per_s"],
        "per_round": [round(x, 3) for x in paired],
        "median_of_rounds": statistics.median(paired),
    }


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


LOOP_NAMES = {"naive": "naive", REFERENCE: "naive, seed batch", "glioseg": "glioseg"}


def speedup_cell(overall: float, median: float) -> str:
    return f"**{overall:.2f}x** ({median:.2f}x)"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per loop, the speed-up on the glioseg row, cache timings below."""
    head = (
        "| profile | loop | device | torch | px | batch | precision, layout | timed images (steps x batch) "
        "| seconds | images/s | per round | glioseg speed-up over this loop (median of rounds) "
        f"| epoch s ({REAL_TRAIN_SLICES} slices, projected) | peak RSS MiB (+ over start) | CUDA max alloc MiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for result in results:
        rows = {"naive": speedup_cell(result["speedup"], result["speedup_median_of_rounds"])}
        if REFERENCE in result:
            reference = result["speedup_vs_reference_batch"]
            rows[REFERENCE] = speedup_cell(reference["overall"], reference["median_of_rounds"])
        rows["glioseg"] = "-"
        for key, speed in rows.items():
            r = result[key]
            per_round = " / ".join(f"{x:.1f}" for x in r["images_per_s_per_round"])
            lines.append(
                f"| {result['profile']} | {LOOP_NAMES[key]} | {r['device_name']} | {r['torch']} | {r['image_size']} "
                f"| {r['batch_size']} | {r['precision']}, {r['memory_format']} | {r['images']} ({r['steps']} x "
                f"{r['batch_size']}) | {r['seconds']:.2f} | {r['images_per_s']:.2f} | {per_round} | {speed} "
                f"| {result['epoch_s_projected'][key]:.1f} "
                f"| {_fmt(r['peak_rss_mib'], 0)} (+{_fmt(r['peak_rss_over_start_mib'], 0)}) "
                f"| {_fmt(r['cuda_max_allocated_mib'], 0)} |"
            )
    lines.append("")
    for result in results:
        lines.append(
            f"- {result['profile']} ({result['description']}; {result['encoder']}): cache of {result['slices']} "
            f"slices at {result['image_size']} px: build (TIF decode + resize + distance maps) "
            f"{result['cache_build_s']:.2f} s; load (`load_cache`: `np.load` of the {result['cache_mib']:.1f} MiB "
            f".npz, median of 3) {result['cache_load_s']:.4f} s; the naive loop spent "
            f"{100 * (result['naive'].get('data_share') or 0):.0f}% of its timed seconds in its DataLoader"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=[*PROFILES, *PROFILE_SETS],
        default="all",
        help="default = seed protocol (128 px, resnet34); cpu = the --params file; both = those "
        "two (the CPU table); gpu = the seed protocol at batch 10 and 64 on CUDA (gpu-10, gpu-64); "
        "all (default) = both, and gpu where CUDA is present",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed optimiser steps per loop (default: default=8, cpu=30)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="split the timed steps into N rounds alternating the loops (default: default=4, cpu=5)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps before timing (default: default=1, cpu=2)"
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="where to write results")
    parser.add_argument(
        "--data", default="synthetic", help="'synthetic' (generate_lgg into a temp dir) or a path to a kaggle_3m folder"
    )
    parser.add_argument(
        "--max-slices", type=int, default=120, help="use the first N slices of --data (synthetic gives 120)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("profiles/cpu-real.yaml"),
        help="a profile composed onto the defaults: the cpu profile's params, and the base the "
        "default profile's overrides go on (default: the real-data CPU profile; its data.source "
        "is not read)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="device of the default and cpu profiles (default cpu: the CPU table); the gpu profiles always run on CUDA",
    )
    parser.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="run the loops in this process (peak RSS then is the process's high-water mark)",
    )
    return parser.parse_args(argv)


def load_pairs(data: str, workdir: Path, max_slices: int) -> tuple[pd.DataFrame, str]:
    if data == "synthetic":
        root = workdir / "kaggle_3m"
        generate_lgg(root, **SYNTHETIC)
        described = "synthetic generate_lgg({patients} patients x {slices} slices, {size} px, seed {seed})"
        described = described.format(**SYNTHETIC)
    else:
        root = Path(data)
        described = f"kaggle_3m at {root}"
    pairs = list_pairs(root).head(max_slices).reset_index(drop=True)
    return pairs, f"{described}, first {len(pairs)} slices"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return benchmark(args, argv)
    except GliosegError as exc:  # a bad params file, data folder or device: one line, as the CLI does
        print(f"error: {exc}", file=sys.stderr)
        return 1


def benchmark(args: argparse.Namespace, argv: list[str] | None) -> int:
    base = compose_params(args.params)
    device = select_device(args.device)  # fail now if 'cuda' is not there
    names, note = selected_profiles(args.profile, torch.cuda.is_available())
    if any(PROFILES[name].device == "cuda" for name in names):
        device = select_device("cuda")
    started = time.perf_counter()
    load_start = load_average()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    with tempfile.TemporaryDirectory(prefix="glioseg-bench-") as tmp:
        pairs, data_description = load_pairs(args.data, Path(tmp), args.max_slices)
        log(f"data: {data_description}")
        if note:
            log(note)
        for name in names:
            profile = PROFILES[name]
            params = profile_params(profile, base, args.device)
            results.append(
                run_profile(
                    profile,
                    params,
                    pairs,
                    Path(tmp),
                    steps=args.steps,
                    warmup=args.warmup,
                    rounds=args.rounds,
                    isolate=args.isolate,
                    log=log,
                )
            )
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(device, load_start),
        **({"note": note} if note else {}),
        "data": data_description,
        "total_seconds": round(time.perf_counter() - started, 1),
        "profiles": results,
    }
    print(table(results))
    if note:
        print(f"\n{note}")
    print(
        f"\ntotal {report['total_seconds']:.0f} s; load average (1, 5, 15 min) at start "
        f"{report['machine']['loadavg_1_5_15_at_start']}, at end {report['machine']['loadavg_1_5_15_at_end']}"
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
