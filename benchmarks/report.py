"""The suite's results as JSON, a markdown table and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import cpu
from benchmarks.suite import Run


def machine(stores: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "stores": stores,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "server": "uvicorn, 2 workers, uvloop, httptools",
        "load": "wrk -t2 -c64 (closed loop: latency counts queueing within the 64 connections)",
    }


def _rps(runs: list[Run], system: str, scenario: str) -> float | None:
    return next((r.rps for r in runs if r.system == system and r.scenario == scenario), None)


def markdown(runs: list[Run], extras: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['date']}, {meta['cpus']} cores, {meta['server']}, {meta['load']}; "
        f"stores: {meta['stores']}; {meta.get('seconds_per_run', '?')} s per run"
        + (
            f", medians of {meta['rounds']} rounds (the systems take turns)"
            if meta.get("rounds", 1) > 1
            else ", one round"
        ),
        "",
        "| scenario | system | req/s | vs ceiling | vs pg-lock | vs naive | p50 ms | p99 ms "
        "| errors | invariants |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ratios = []
        for other in ("ceiling", "pg-lock", "naive"):
            base = _rps(runs, other, run.scenario)
            ratios.append(f"{run.rps / base:.2f}x" if base and run.system != other else "")
        ok = {True: "ok", False: "**broken**", None: "n/a"}[run.invariants_ok]
        lines.append(
            f"| {run.scenario} | {run.system} | {run.rps:,.0f} | {' | '.join(ratios)} | "
            f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.errors} | {ok} |"
        )
    fixed = [run for run in runs if run.open_loop]
    if fixed:
        lines += [
            "",
            "At a fixed rate (benchmarks/openloop.py): latency in ms from when each request was "
            "due; `queued` requests found every connection busy; `tick` is the generator's own "
            "timer slack (p99), not counted in the latencies.",
            "",
            "| scenario | system | asked | reached | p50 | p90 | p99 | p99.9 | max | queued "
            "| tick |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in fixed:
            o = run.open_loop or {}
            lines.append(
                f"| {run.scenario} | {run.system} | {o['rate_asked']:,.0f} | "
                f"{o['rate_reached']:,.0f} | {o['p50_ms']:.2f} | {o['p90_ms']:.2f} | "
                f"{o['p99_ms']:.2f} | {o['p999_ms']:.2f} | {o['max_ms']:.2f} | "
                f"{o['queued']:,.0f} | {o['tick_p99_ms']:.2f} |"
            )
    costed = [run for run in runs if run.cpu_us]
    if costed:
        lines += [
            "",
            "CPU per request, in microseconds, by part (benchmarks/cpu.py): what a request "
            "costs the whole machine. `x ceiling` is the total over the ceiling's total in the "
            "same scenario; `api ÷ load` compares the server with the load generator's own "
            "per-request cost, which is the same work in every run (steadier than req/s when "
            "the machine's speed drifts).",
            "",
            "| scenario | system | api | writer | redis | postgres | load | total | x ceiling "
            "| api ÷ load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in costed:
            cost = run.cpu_us
            total = sum(cost.values())
            top = next(
                (r for r in costed if r.system == "ceiling" and r.scenario == run.scenario), None
            )
            times = f"{total / sum(top.cpu_us.values()):.2f}" if top and top is not run else ""
            relative = f"{cost['api'] / cost['load']:.2f}" if cost.get("load") else ""
            parts = " | ".join(f"{cost.get(part, 0.0):.1f}" for part in cpu.PARTS)
            lines.append(
                f"| {run.scenario} | {run.system} | {parts} | {total:.1f} | {times} | {relative} |"
            )
    lines += _against_baseline(runs, meta)
    writer = extras.get("writer")
    if writer:
        lines += [
            "",
            f"Ledger writer alone: {writer['writer_records_per_s']:,.0f} records/s into "
            f"PostgreSQL, {writer['writer_records_per_s'] / writer['book_rps_alone']:.1f}x the "
            f"/book rate of the same run ({writer['book_rps_alone']:,.0f} req/s without the "
            f"writer); with the writer running, /book {writer['book_rps_with_writer']:,.0f} "
            f"req/s, lag peak {writer['peak_lag']:,.0f} records.",
        ]
    memory = extras.get("memory")
    if memory:
        lines += [
            "",
            f"Redis memory per waiting user at {memory['waiters']:,} waiters: "
            f"{memory['bytes_per_waiter']:.0f} bytes (outbox records trimmed; "
            f"{memory['bytes_per_waiter_with_outbox']:.0f} before).",
        ]
    return "\n".join(lines) + "\n"


def _against_baseline(runs: list[Run], meta: dict[str, Any]) -> list[str]:
    """Each `<system>@<sha>` (an older commit, `--baseline`) beside its namesake of this code:
    the new figure over the old one, and the CPU per request of each part, old → new."""
    pairs = []
    for old in runs:
        name, _, sha = old.system.partition("@")
        new = next((r for r in runs if r.system == name and r.scenario == old.scenario), None)
        if sha and new is not None:
            pairs.append((name, sha, old, new))
    if not pairs:
        return []
    rev = meta.get("baseline", {}).get("rev")
    named = f"{pairs[0][1]}" + (f" (`--baseline {rev}`)" if rev else "")
    lines = [
        "",
        f"This code against {named}: `new ÷ old` of each figure (above 1: more requests, a "
        "longer p99, more CPU per request), then each part's CPU per request in µs, old → new.",
        "",
        "| scenario | system | req/s old | req/s new | new ÷ old | p99 old | p99 new | new ÷ old "
        "| api ÷ load old | api ÷ load new | new ÷ old |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(new: float | None, old: float | None) -> str:
        return f"{new / old:.3f}" if new is not None and old else ""

    def relative(run: Run) -> float | None:
        load = run.cpu_us.get("load")
        return run.cpu_us.get("api", 0.0) / load if load else None

    for name, _, old, new in pairs:
        old_rel, new_rel = relative(old), relative(new)
        shown = [f"{v:.2f}" if v is not None else "" for v in (old_rel, new_rel)]
        lines.append(
            f"| {new.scenario} | {name} | {old.rps:,.0f} | {new.rps:,.0f} | "
            f"{ratio(new.rps, old.rps)} | {old.p99_ms:.2f} | {new.p99_ms:.2f} | "
            f"{ratio(new.p99_ms, old.p99_ms)} | {shown[0]} | {shown[1]} | "
            f"{ratio(new_rel, old_rel)} |"
        )
    lines += [
        "",
        "| scenario | system | " + " | ".join(cpu.PARTS) + " | total |",
        "|---|---|" + "---|" * (len(cpu.PARTS) + 1),
    ]
    for name, _, old, new in pairs:
        cells = []
        for part in cpu.PARTS:
            before, after = old.cpu_us.get(part, 0.0), new.cpu_us.get(part, 0.0)
            cells.append(f"{before:.1f} → {after:.1f} ({after - before:+.1f})")
        before, after = sum(old.cpu_us.values()), sum(new.cpu_us.values())
        cells.append(f"{before:.1f} → {after:.1f} ({after - before:+.1f})")
        lines.append(f"| {new.scenario} | {name} | " + " | ".join(cells) + " |")
    return lines


def chart(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    systems = list(dict.fromkeys(r.system for r in runs))
    width = 0.8 / max(len(systems), 1)
    # At a fixed rate every system that keeps up answers the same rate: latency is the figure.
    fixed = any(r.open_loop for r in runs)

    def value(system: str, scenario: str) -> float:
        run = next((r for r in runs if r.system == system and r.scenario == scenario), None)
        return 0.0 if run is None else run.p99_ms if fixed else run.rps

    figure, axes = plt.subplots(figsize=(11, 5))
    for index, system in enumerate(systems):
        values = [value(system, s) for s in scenarios]
        positions = [x + index * width for x in range(len(scenarios))]
        axes.bar(positions, values, width, label=system)
    axes.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(scenarios))])
    axes.set_xticklabels(scenarios)
    if fixed:
        axes.set_yscale("log")
        axes.set_ylabel("p99 latency, ms (log), from when each request was due")
    else:
        axes.set_ylabel("requests/s")
    rounds = max((r.rounds for r in runs), default=1)
    made = "one round" if rounds == 1 else f"medians of {rounds} rounds"
    axes.set_title(f"boxoffice benchmark suite ({made}; compare within the run)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(
    runs: list[Run], extras: dict[str, Any], meta: dict[str, Any], out: Path
) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "extras": extras, "machine": meta}, indent=2)
    )
    table = out.with_suffix(".md")
    table.write_text(markdown(runs, extras, meta))
    picture = out.with_suffix(".png")
    chart(runs, picture)
    return table, picture
