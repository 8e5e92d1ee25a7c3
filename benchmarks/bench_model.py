"""Forward and training-step speed: megabert_edu vs the reference (transformers MegatronBert), same weights.

    python benchmarks/bench_model.py            # 12 layers, hidden 768, CPU fp32, 2 threads

Prints reference time / our time for each shape (> 1 means we are faster). Each measurement is the
median of several repeats, alternating the two models so that drift in machine speed hits both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import make_pair, tiny_config  # noqa: E402

FORWARD_SHAPES = [(1, 128), (8, 128), (4, 512)]
TRAIN_SHAPE = (4, 256)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(fn_ours, fn_ref, repeats: int, rounds: int = 3) -> tuple[float, float]:
    fn_ours(), fn_ref()  # warm-up
    ours, ref = [], []
    for _ in range(rounds):
        ours.append(timed(fn_ours, repeats))
        ref.append(timed(fn_ref, repeats))
    return min(ours), min(ref)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = tiny_config(vocab_size=30522, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                         max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    ours, ref = make_pair("MegatronBertModel", config)
    print(f"MegatronBertModel {args.layers} layers, hidden {args.hidden}, CPU fp32, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'case':<22}{'ours ms':>10}{'ref ms':>10}{'ref/ours':>10}")
    g = torch.Generator().manual_seed(0)
    for B, T in FORWARD_SHAPES:
        ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
        with torch.inference_mode():
            t_ours, t_ref = compare(lambda ids=ids: ours(ids), lambda ids=ids: ref(ids), args.repeats)
        print(f"{f'forward ({B}, {T})':<22}{t_ours * 1e3:>10.1f}{t_ref * 1e3:>10.1f}{t_ref / t_ours:>10.2f}")

    B, T = TRAIN_SHAPE
    ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
    ours.train(), ref.train()

    def step(model):
        def run():
            out = model(ids)
            out.last_hidden_state.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)
        return run

    t_ours, t_ref = compare(step(ours), step(ref), max(1, args.repeats - 1), rounds=2)
    print(f"{f'train step ({B}, {T})':<22}{t_ours * 1e3:>10.1f}{t_ref * 1e3:>10.1f}{t_ref / t_ours:>10.2f}")


if __name__ == "__main__":
    main()
