"""Capacity: the highest sustained request rate and the most concurrent streams a gateway
holds with p99 overhead under --max-overhead-ms and no errors, for the full pipeline and
the bare proxy side by side.

Profiles (bench/stack.py): `full` is the public tier with every stage on and its limits
set far above the load (the limiter still runs); `bare` is the trusted tier with
classification, output moderation, the watermark (payload and ledger) and limits off.
Auth, request shaping, the audit log and metrics cannot be switched off by configuration
and stay on in both.

Overhead is measured end to end: p99 latency through the gateway minus p99 latency
straight at the simulator, at the same arrival rate (or stream count), in the same run,
moments before. The gateway's own `x-gateway-overhead-ms` header is printed too ("own
p99") but is not the criterion: it times the request stages up to forwarding, so it
misses exactly what grows near capacity - time queued in the event loop before the
handler runs, reading the body, relaying the response through output moderation and the
watermark, the audit write, and the CPU the gateway takes from its neighbours.

Requests: open loop at a fixed arrival rate, stepped up by --factor (bench/loadgen.py:
latency counts from when a request was due, so falling behind shows). Streams: that many
slow streams held open, each re-opened as it ends; overhead is the larger p99 difference
of time to first token and time to [DONE]. A profile stops climbing at its first failed
step (any error, overhead over the bound, requests unfinished after the step) and its
capacity is the last step it passed. If the simulator straight fails a step, or the load
generator sends more than --max-late-ms late at p99, the run stops: the result is then a
lower bound (more --clients, or a bigger machine).

    python bench/capacity.py            # full run, roughly 20-30 minutes on a quiet machine
    python bench/capacity.py --quick    # smoke run, about 2 minutes
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import loadgen
from loadgen import Job, Tally
from stack import metric, running


@dataclass(frozen=True)
class Target:
    name: str  # direct | bare | full
    url: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    p50_ms: float
    p99_ms: float
    overhead_ms: float  # nan for direct
    ok: bool
    why: str


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


class Runner:
    """Runs one step of load for one target across the generator processes."""

    def __init__(self, args: argparse.Namespace, pool: ProcessPoolExecutor) -> None:
        self.args, self.pool = args, pool

    def step(self, target: Target, kind: str, level: float) -> Tally:
        args, clients = self.args, self.args.clients
        streams = kind == "streams"
        length = args.stream_tokens / args.stream_tps
        start_at = time.time() + 0.5
        jobs = [Job(kind, target.url, target.tokens,
                    _share(level, clients, i) if streams else level / clients,
                    measure_s=args.stream_step_s if streams else args.step_s,
                    warm_s=length if streams else args.warm_s, start_at=start_at,
                    phase=i / clients, stream_tokens=args.stream_tokens,
                    stream_tps=args.stream_tps)
                for i in range(clients)]
        total = Tally()
        for part in self.pool.map(loadgen.run, [j for j in jobs if j.amount > 0]):
            total.merge(part)
        if target.name != "direct":
            _quiesce(target.url)
        return total


def _share(streams: float, clients: int, i: int) -> int:
    return int(streams) // clients + (1 if i < int(streams) % clients else 0)


def _quiesce(url: str, timeout_s: float = 60) -> None:
    """Wait for a gateway to finish what an overloaded step left (cancelled stragglers),
    so it does not take CPU from the next measurement."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            if metric(resp.read().decode(), "gateway_requests_in_flight") <= 1:
                return  # the scrape itself
        time.sleep(0.2)


def judge(args: argparse.Namespace, kind: str, tally: Tally, direct: Tally | None,
          ) -> Outcome:
    p50, p99 = p(tally.latencies, .5) * 1000, p(tally.latencies, .99) * 1000
    if direct is None:
        late = p(tally.late, .99) * 1000 if tally.late else 0.0
        why = (f"{tally.errors} errors: {tally.first_error}" if tally.errors
               else f"generator {late:.1f} ms late" if late > args.max_late_ms
               else "no timings" if not tally.latencies else "")
        return Outcome(p50, p99, math.nan, not why, why)
    overhead = p99 - p(direct.latencies, .99) * 1000
    if kind == "streams":
        overhead = max(overhead, (p(tally.ttfts, .99) - p(direct.ttfts, .99)) * 1000)
    why = (f"{tally.errors} errors: {tally.first_error}" if tally.errors
           else "no timings" if not tally.latencies
           else f"overhead {overhead:.1f} ms" if overhead > args.max_overhead_ms else "")
    return Outcome(p50, p99, overhead, not why, why)


def climb(runner: Runner, targets: list[Target], kind: str, levels: list[float],
          ) -> dict[str, tuple[float, bool]]:
    """Step up through `levels`; per profile, the last level passed and whether the run
    stopped early because the simulator straight could not keep up (a lower bound)."""
    unit = "streams" if kind == "streams" else "req/s"
    print(f"\n{unit:>7}  {'target':7} {'p50 ms':>8} {'p99 ms':>8} {'overhead':>9} "
          f"{'own p99':>8}  verdict")
    best = {t.name: (0.0, False) for t in targets[1:]}
    climbing = list(targets[1:])
    for level in levels:
        direct = runner.step(targets[0], kind, level)
        outcome = judge(runner.args, kind, direct, None)
        _row(level, "direct", outcome, direct)
        if not outcome.ok:
            print(f"  stopped: direct fails at {level:g} {unit}, so the load generator or "
                  "the simulator is the limit here; the capacities are lower bounds")
            return {name: (value, value > 0) for name, (value, _) in best.items()}
        for target in list(climbing):
            tally = runner.step(target, kind, level)
            outcome = judge(runner.args, kind, tally, direct)
            _row(level, target.name, outcome, tally)
            if outcome.ok:
                best[target.name] = (level, False)
            else:
                climbing.remove(target)
        if not climbing:
            break
    return best


def _row(level: float, name: str, outcome: Outcome, tally: Tally) -> None:
    own = f"{p(tally.own_ms, .99):6.2f}" if tally.own_ms else ""
    overhead = "" if math.isnan(outcome.overhead_ms) else f"{outcome.overhead_ms:7.1f}"
    print(f"{level:7g}  {name:7} {outcome.p50_ms:8.1f} {outcome.p99_ms:8.1f} {overhead:>9} "
          f"{own:>8}  {'ok' if outcome.ok else 'FAIL ' + outcome.why}", flush=True)


def levels(start: float, stop: float, factor: float, whole: bool) -> list[float]:
    out, level = [], start
    while level <= stop:
        out.append(float(round(level)) if whole else round(level, 1))
        level *= factor
    return out


def summary(profiles: list[str], rates: dict[str, tuple[float, bool]],
            streams: dict[str, tuple[float, bool]], bound: float) -> None:
    def cell(found: tuple[float, bool]) -> str:
        return f"{'>= ' if found[1] else ''}{found[0]:g}"

    print(f"\ncapacity with p99 overhead under {bound:g} ms and no errors")
    print(f"  {'':26}" + "".join(f"{name:>12}" for name in profiles))
    rows: list[tuple[str, Callable[[str], str]]] = [
        ("sustained requests/s", lambda n: cell(rates.get(n, (0.0, False)))),
        ("concurrent streams", lambda n: cell(streams.get(n, (0.0, False))))]
    for label, value in rows:
        print(f"  {label:26}" + "".join(f"{value(name):>12}" for name in profiles))


def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with running(args.only) as stack, ProcessPoolExecutor(args.clients,
                                                          mp_context=context) as pool:
        for future in [pool.submit(loadgen.ready) for _ in range(args.clients)]:
            future.result()
        targets = [Target("direct", stack.sim_url, ())] + [
            Target(name, gw.url, gw.tokens) for name, gw in stack.gateways.items()]
        runner = Runner(args, pool)
        print(f"capacity: {args.clients} generator processes, steps of {args.step_s:g} s "
              f"(requests) and {args.stream_step_s:g} s (streams of {args.stream_tokens} "
              f"tokens at {args.stream_tps:g} tokens/s), overhead bound "
              f"{args.max_overhead_ms:g} ms")
        rates = climb(runner, targets, "rate",
                      levels(args.start_rate, args.max_rate, args.factor, False))
        streams = climb(runner, targets, "streams",
                        levels(args.start_streams, args.max_streams, 2, True))
    summary(args.only, rates, streams, args.max_overhead_ms)
    print(f"\n({time.monotonic() - started:.0f} s)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="bare,full", help="profiles: bare, full")
    parser.add_argument("--clients", type=int,
                        default=max(1, min(4, (os.cpu_count() or 1) // 4)),
                        help="load generator processes")
    parser.add_argument("--max-overhead-ms", type=float, default=50)
    parser.add_argument("--max-late-ms", type=float, default=20,
                        help="p99 lateness of the generator beyond which results stop")
    parser.add_argument("--start-rate", type=float, default=25)
    parser.add_argument("--max-rate", type=float, default=4000)
    parser.add_argument("--factor", type=float, default=1.25, help="rate step factor")
    parser.add_argument("--step-s", type=float, default=10, help="measured s per rate step")
    parser.add_argument("--warm-s", type=float, default=1, help="unmeasured s before it")
    parser.add_argument("--start-streams", type=int, default=64)
    parser.add_argument("--max-streams", type=int, default=4096)
    parser.add_argument("--stream-step-s", type=float, default=20)
    parser.add_argument("--stream-tokens", type=int, default=50)
    parser.add_argument("--stream-tps", type=float, default=5)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    if args.quick:
        args.step_s, args.stream_step_s, args.factor = 3, 4, 2
        args.start_rate, args.max_rate, args.start_streams, args.max_streams = 20, 80, 16, 64
        args.stream_tokens = 10
    return args


if __name__ == "__main__":
    main(parse())
