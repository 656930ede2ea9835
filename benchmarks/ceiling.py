"""What bounds glioseg's CPU speed-up: ``python -m benchmarks.ceiling``.

:mod:`benchmarks.run` compares whole loops. This benchmark takes the data path away and times
the bare optimiser step of the same U-Net (forward, loss, backward, Adam) on one fixed batch
already in memory, under the precision, memory-layout and optimiser choices that separate the
naive loop's compute from glioseg's:

- ``naive``: fp32, contiguous, per-tensor Adam (what the naive loop computes);
- ``channels_last``: fp32, channels-last, per-tensor Adam;
- ``fused_adam``: fp32, channels-last, fused Adam;
- ``bf16``: bf16 autocast, contiguous, fused Adam;
- ``glioseg``: bf16 autocast, channels-last, fused Adam (what glioseg's Trainer computes);
- ``glioseg_compiled`` (with ``--compile``): the same under ``torch.compile`` (``train.compile``),
  its compile time counted in its warm-up, not in its rounds.

The bf16 variants run only where oneDNN has native bf16 (``cpu_has_native_bf16``). The variants
take timed rounds in turn, as in :mod:`benchmarks.run`, so load from other processes falls on
all of them. A torch profiler pass over each variant then splits its step into convolutions,
batch norm, the optimiser and the rest (self CPU time of the aten ops).

The ratio ``glioseg / naive`` here is the most any loop change can gain while the model, image
size and batch stay the same: the whole-loop speed-up of :mod:`benchmarks.run` can exceed it
only by the naive loop's data-path share. Figures in benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.loops import bce_dice
from benchmarks.machine import load_average, machine_info, write_report
from glioseg.config.compose import compose_params
from glioseg.config.schema import Params, parse_params
from glioseg.device import cpu_has_native_bf16
from glioseg.errors import GliosegError
from glioseg.model.network import build_model


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool
    channels_last: bool
    fused_adam: bool
    compiled: bool = False

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    @property
    def adam(self) -> str:
        return "fused" if self.fused_adam else "per-tensor"


VARIANTS = (
    Variant("naive", bf16=False, channels_last=False, fused_adam=False),
    Variant("channels_last", bf16=False, channels_last=True, fused_adam=False),
    Variant("fused_adam", bf16=False, channels_last=True, fused_adam=True),
    Variant("bf16", bf16=True, channels_last=False, fused_adam=True),
    Variant("glioseg", bf16=True, channels_last=True, fused_adam=True),
)
COMPILED = Variant("glioseg_compiled", bf16=True, channels_last=True, fused_adam=True, compiled=True)

SHARES = ("convolution", "batch_norm", "optimiser", "other")


def time_shares(events: list[tuple[str, float, float]]) -> dict[str, float]:
    """Shares of a step's CPU time from profiler events (name, self time, inclusive time).

    ``optimiser`` is the inclusive time of the ``Optimizer.*`` ranges (step and zero_grad, all the
    aten ops inside them); ``convolution`` and ``batch_norm`` the self time of the aten ops so
    named (none run inside the optimiser); ``other`` the rest of the summed self time.
    """
    whole = sum(own for _, own, _ in events)
    if not whole:
        return dict.fromkeys(SHARES, 0.0)
    optimiser = sum(total for name, _, total in events if name.startswith("Optimizer."))
    convolution = sum(own for name, own, _ in events if name.startswith("aten::") and "convolution" in name)
    batch_norm = sum(own for name, own, _ in events if name.startswith("aten::") and "batch_norm" in name)
    other = whole - optimiser - convolution - batch_norm
    return {name: round(value / whole, 4) for name, value in zip(SHARES, (convolution, batch_norm, optimiser, other))}


class BareStep:
    """One fixed random batch and the profile's U-Net, stepped under one variant."""

    def __init__(self, params: Params, variant: Variant):
        torch.manual_seed(params.seed)
        layout = torch.channels_last if variant.channels_last else torch.contiguous_format
        self.variant = variant
        self.model = build_model(params.model).to(memory_format=layout).train()
        self.forward = torch.compile(self.model) if variant.compiled else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=params.lr, fused=variant.fused_adam)
        size, batch = params.augment.image_size, params.batch_size
        generator = torch.Generator().manual_seed(params.seed)
        images = torch.randn(batch, params.model.in_channels, size, size, generator=generator)
        self.images = images.contiguous(memory_format=layout)
        self.target = (torch.rand(batch, params.model.classes, size, size, generator=generator) > 0.9).float()
        self.rounds: list[tuple[int, float]] = []  # (images, seconds) per timed round
        self.warmup_seconds = 0.0

    def step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.variant.bf16):
            logits = self.forward(self.images)
        loss = bce_dice(logits.float(), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def steps(self, count: int) -> None:
        for _ in range(count):
            self.step()

    def timed(self, count: int) -> float:
        began = time.perf_counter()
        self.steps(count)
        seconds = time.perf_counter() - began
        self.rounds.append((count * len(self.images), seconds))
        return count * len(self.images) / seconds

    def time_shares(self, count: int) -> dict[str, float]:
        """:func:`time_shares` of ``count`` steps under the torch profiler."""
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.steps(count)
        return time_shares([(e.key, e.self_cpu_time_total, e.cpu_time_total) for e in prof.key_averages()])


def available_variants(native_bf16: bool, compiled: bool = False) -> list[Variant]:
    chosen = [*VARIANTS, COMPILED] if compiled else list(VARIANTS)
    return [variant for variant in chosen if native_bf16 or not variant.bf16]


def measure(
    params: Params,
    variants: list[Variant],
    *,
    steps: int,
    warmup: int,
    rounds: int,
    profiled_steps: int,
    log=lambda _: None,
) -> list[dict[str, Any]]:
    """Warm up every variant, then ``rounds`` timed rounds in turn (each variant leading one), then profile."""
    if steps < rounds or rounds < 1 or warmup < 0 or profiled_steps < 1:
        raise ValueError(
            f"need steps >= rounds >= 1, warmup >= 0, profiled steps >= 1; "
            f"got {steps}, {rounds}, {warmup}, {profiled_steps}"
        )
    sessions = [BareStep(params, variant) for variant in variants]
    for session in sessions:
        began = time.perf_counter()
        session.steps(warmup)
        session.warmup_seconds = time.perf_counter() - began
    chunks = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for i, chunk in enumerate(chunks):
        order = sessions[i % len(sessions) :] + sessions[: i % len(sessions)]
        speeds = {session.variant.name: session.timed(chunk) for session in order}
        log(
            f"round {i + 1}/{rounds}: "
            + ", ".join(f"{name} {speed:.1f}" for name, speed in speeds.items())
            + " images/s"
        )
    results = []
    for session in sessions:
        images = sum(r[0] for r in session.rounds)
        seconds = sum(r[1] for r in session.rounds)
        results.append(
            {
                **asdict(session.variant),
                "precision": session.variant.precision,
                "memory_format": session.variant.memory_format,
                "adam": session.variant.adam,
                "warmup_steps": warmup,
                "warmup_seconds": round(session.warmup_seconds, 2),
                "images": images,
                "seconds": round(seconds, 4),
                "images_per_s": images / seconds,
                "images_per_s_per_round": [round(n / s, 3) for n, s in session.rounds],
                "time_shares": session.time_shares(profiled_steps),
            }
        )
    naive = next(r for r in results if r["name"] == "naive")
    for result in results:
        paired = [v / n for v, n in zip(result["images_per_s_per_round"], naive["images_per_s_per_round"])]
        result["over_naive"] = result["images_per_s"] / naive["images_per_s"]
        result["over_naive_median_of_rounds"] = statistics.median(paired)
    return results


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| variant | precision | layout | Adam | images/s | per round | over naive (median of rounds) "
        "| convolution | batch norm | optimiser | other |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        shares = r["time_shares"]
        per_round = " / ".join(f"{x:.1f}" for x in r["images_per_s_per_round"])
        lines.append(
            f"| {r['name']} | {r['precision']} | {r['memory_format']} | {r['adam']} | {r['images_per_s']:.1f} "
            f"| {per_round} | **{r['over_naive']:.2f}x** ({r['over_naive_median_of_rounds']:.2f}x) | "
            + " | ".join(f"{100 * shares[key]:.0f}%" for key in SHARES)
            + " |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("profiles/cpu-real.yaml"),
        help="model, image size, batch and lr (default: the CPU profile)",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the timed steps are split into (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    parser.add_argument(
        "--profiled-steps",
        type=int,
        default=3,
        help="steps per variant under the torch profiler for the time shares (default 3)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add glioseg's step under torch.compile (compiling takes minutes on 2 cores)",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/ceiling.json"), help="where to write results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        params = parse_params(compose_params(args.params))
    except GliosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if params.run.threads:
        torch.set_num_threads(params.run.threads)
    native_bf16 = cpu_has_native_bf16()
    variants = available_variants(native_bf16, args.compile)
    load_start = load_average()
    started = time.perf_counter()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"{params.model.encoder} U-Net at {params.augment.image_size} px, batch {params.batch_size}: "
        f"{args.warmup} warm-up + {args.steps} timed steps per variant, {len(variants)} variants"
    )
    results = measure(
        params,
        variants,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        profiled_steps=args.profiled_steps,
        log=log,
    )
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.ceiling " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(torch.device("cpu"), load_start),
        "native_bf16": native_bf16,
        "params": str(args.params),
        "image_size": params.augment.image_size,
        "batch_size": params.batch_size,
        "encoder": params.model.encoder,
        "decoder_channels": list(params.model.decoder_channels),
        "total_seconds": round(time.perf_counter() - started, 1),
        "variants": results,
    }
    print(table(results))
    if not native_bf16:
        print("\nno native bf16 on this CPU: the bf16 variants are left out")
    print(
        f"\ntotal {report['total_seconds']:.0f} s; load average (1, 5, 15 min) at start {load_start}, "
        f"at end {report['machine']['loadavg_1_5_15_at_end']}"
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
