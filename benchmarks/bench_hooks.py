"""Idle-hook overhead: the model with its HookPoints in place (nothing attached) vs the same weights with
every HookPoint compiled out (replaced by a plain identity function, so no nn.Module call machinery).

    python benchmarks/bench_hooks.py                 # MiniLM-sized: 6 layers, hidden 384; CPU fp32, 2 threads
    python benchmarks/bench_hooks.py --layers 24 --hidden 1024
    python benchmarks/bench_hooks.py --module-call   # without HookPoint's idle shortcut, for comparison

Prints, per input shape, the fastest forward time of each model and their ratio hooked / compiled out
(1.00 = no cost); an A/A ratio (compiled out vs an identical copy), which shows how big a difference
timing noise alone produces; and the ratio predicted from a micro-benchmark of one idle HookPoint call
times the number of hook calls per forward. The models take turns call by call, so drift on a shared
machine hits all of them alike, and the fastest of many calls filters out preemption.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads stall
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import tiny_config  # noqa: E402

import megabert_edu  # noqa: E402
from megabert_edu.hooks import HookPoint  # noqa: E402

SHAPES = [(1, 8), (1, 128), (8, 128)]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


identity.active = False  # attention asks `hook_scores.active` to choose its path: never, here


def compile_out_hook_points(model: torch.nn.Module) -> int:
    """Replace every HookPoint attribute with `identity`; returns how many were replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                delattr(module, name)  # drop it from the module tree ...
                object.__setattr__(module, name, identity)  # ... and leave a plain function in its place
                replaced += 1
    return replaced


def hook_calls_per_forward(model, ids) -> int:
    calls = []
    with model.hooks(fwd_hooks=[("*", lambda x, name: calls.append(name))]):
        model(ids)
    return len(calls)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def paired_times(fns: list, seconds: float, clock=time.perf_counter, min_iterations: int = 7
                 ) -> list[list[float]]:
    """Call each fn once per iteration, rotating who goes first, for about `seconds`; times per fn.

    Comparing the fns iteration by iteration (paired) cancels the slow drift of a shared machine.
    """
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    start, i = time.perf_counter(), 0
    while i < min_iterations or time.perf_counter() - start < seconds:
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            t0 = clock()
            fns[j]()
            times[j].append(clock() - t0)
        i += 1
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="time spent per shape")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="cpu: process CPU time instead of wall time")
    parser.add_argument("--module-call", action="store_true",
                        help="measure idle HookPoints going through nn.Module.__call__ (no idle shortcut)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.module_call:
        HookPoint.__call__ = torch.nn.Module.__call__  # this process only: what the shortcut saves
    config = tiny_config(vocab_size=30522, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 32, intermediate_size=4 * args.hidden,
                         max_position_embeddings=512)
    torch.manual_seed(0)
    hooked = megabert_edu.MegatronBertModel(config).eval()
    bare = copy.deepcopy(hooked)
    replaced = compile_out_hook_points(bare)
    twin = copy.deepcopy(bare)
    print(f"MegatronBertModel {args.layers} layers, hidden {args.hidden}, CPU fp32, {args.threads} threads, "
          f"torch {torch.__version__}; {args.clock} clock; {replaced} HookPoints compiled out"
          + ("; idle HookPoints call nn.Module.__call__" if args.module_call else ""))
    idle, plain = idle_call_cost()
    print(f"one idle HookPoint call: {idle:.2f} us; the plain function that replaces it: {plain:.2f} us")
    print(f"{'shape':<12}{'hook calls':>11}{'hooked ms':>11}{'bare ms':>10}{'hooked/bare':>13}{'A/A':>7}"
          f"{'predicted':>11}")
    g = torch.Generator().manual_seed(0)
    for B, T in SHAPES:
        ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
        calls = hook_calls_per_forward(hooked, ids)
        with torch.inference_mode():
            assert torch.equal(hooked(ids).last_hidden_state, bare(ids).last_hidden_state)
            runs = [lambda m=m: m(ids) for m in (hooked, bare, twin)]  # noqa: B023 (used inside this loop)
            t_hooked, t_bare, t_twin = (min(t) for t in paired_times(runs, args.seconds, CLOCKS[args.clock]))
        predicted = 1 + calls * (idle - plain) * 1e-6 / t_bare  # the micro-benchmark, scaled up
        print(f"{f'({B}, {T})':<12}{calls:>11}{t_hooked * 1e3:>11.3f}{t_bare * 1e3:>10.3f}"
              f"{t_hooked / t_bare:>13.3f}{t_twin / t_bare:>7.3f}{predicted:>11.4f}")


def idle_call_cost(number: int = 20000, repeats: int = 25) -> tuple[float, float]:
    """Microseconds per call of an idle HookPoint and of `identity` (the best of `repeats` runs)."""
    x = torch.zeros(1)
    point = HookPoint()
    costs = []
    for fn in (point, identity):
        costs.append(min(timeit.repeat(lambda fn=fn: fn(x), number=number, repeat=repeats)) / number * 1e6)
    return costs[0], costs[1]


if __name__ == "__main__":
    main()
