"""GPU benchmark: megabert_edu vs transformers 4.57.6, same process, same weights, Megatron-BERT-345M shape.

    python benchmarks/bench_gpu.py                      # on a GPU: the full 345M runs (a few minutes)
    python benchmarks/bench_gpu.py --smoke              # tiny sizes; runs on a CPU in seconds (make test does)
    python benchmarks/bench_gpu.py --compile --json out.json

What is measured (each line: ours, the reference, ours / reference):

1. Fine-tuning step, sequence classification, sequence 512, in the precision choose_precision picks
   (bf16 autocast on Ampere and later): sequences/s, peak memory, and model-FLOPs utilisation

       MFU = (6 x N x tokens + 12 x L x H x B x T^2) / step time / peak dense bf16 FLOP/s

   N = parameters outside the embeddings (an embedding lookup does no multiply-adds), tokens = B x T,
   6 = 2 FLOPs per multiply-add x (1 forward + 2 backward); the second term is the attention
   products QK^T and PV (2 x 2 x B x T^2 x H per layer forward, x3 with backward), as in the PaLM
   paper's appendix B. The peak is the GPU's dense (not sparse) bf16 tensor-core rate from PEAK_TFLOPS,
   e.g. H100/H200 SXM 989 TFLOP/s; --peak-tflops overrides it.
2. Inference (no grad) at sequence 128 and 512, batch 1 and 64: sequences/s.
3. Greedy generation, 128 new tokens from a 16-token prompt, batch 1 and 16: new tokens/s, ours with
   the dynamic and static caches (and the compiled fixed-shape step with --compile) vs transformers'
   generate. Under bf16 two implementations may pick different tokens once logits tie to bf16
   precision, so the output reports where they first differ rather than asserting equality.

Both models run the same step code (megabert_edu.training.train_step: AdamW, clipping, the finite
check), so the difference is the model. Timings: warm-up, then the two alternate, best of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

# Threads that spin while waiting for work starve each other on a shared CPU; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import transformers  # noqa: E402

import megabert_edu  # noqa: E402
from megabert_edu.precision import Precision, choose_precision  # noqa: E402
from megabert_edu.training import TrainConfig, TrainState, linear_schedule, make_optimizer, train_step  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets; fp16 for GPUs without bf16).
# Checked in order, so the more specific names come first.
PEAK_TFLOPS = {
    "H200": 989.0, "GH200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H800": 989.0, "A100": 312.0,
    "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0,
    "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0,
}

FULL = dict(vocab_size=29056, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            max_position_embeddings=512)
SMOKE = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
             max_position_embeddings=64)


@dataclass
class Sizes:
    """What each part runs at: the 345M shape on a GPU, or tiny numbers for --smoke."""

    config: dict
    train_seq: int
    train_batch: int
    infer: list[tuple[int, int]]  # (batch, seq)
    gen_batches: list[int]
    gen_prompt: int
    gen_new: int


def sizes(args) -> Sizes:
    if args.smoke:
        return Sizes(SMOKE, train_seq=32, train_batch=4, infer=[(1, 16), (4, 32)], gen_batches=[1, 2],
                     gen_prompt=4, gen_new=8)
    return Sizes(FULL, train_seq=512, train_batch=args.train_batch, infer=[(1, 128), (64, 128), (1, 512), (64, 512)],
                 gen_batches=[1, 16], gen_prompt=16, gen_new=128)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, the name it was matched by) for this device."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value, key
    return None, f"unknown GPU {name!r} (pass --peak-tflops)"


def pair(model_name: str, config: dict, device: torch.device, seed: int = 0, **extra):
    """(ours, reference) holding the same random weights, on `device`."""
    torch.manual_seed(seed)
    with device:  # initialise on the device: 345M random weights take seconds on a CPU
        ours = getattr(megabert_edu, model_name)(megabert_edu.MegatronBertConfig(**config, **extra))
        ref = getattr(transformers, model_name)(transformers.MegatronBertConfig(**config, **extra))
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ours.to(device), ref.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(runs: dict[str, Callable], repeats: int, device: torch.device, warmup: int = 1) -> dict[str, float]:
    """Best wall time of each run; runs alternate within a repeat so a busy machine slows both alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def peak_memory(fn: Callable, device: torch.device) -> float | None:
    """Peak GPU memory (GiB) allocated while `fn` runs; None on a CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def non_embedding_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def training_flops(n_params: int, layers: int, hidden: int, batch: int, seq: int) -> float:
    """Model FLOPs of one training step: 6 N tokens + attention's 12 L H B T^2."""
    return 6 * n_params * batch * seq + 12 * layers * hidden * batch * seq ** 2


def bench_training(s: Sizes, precision: Precision, args) -> dict:
    device = precision.device
    ours, ref = pair("MegatronBertForSequenceClassification", s.config, device, num_labels=2,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, s.config["vocab_size"], (s.train_batch, s.train_seq), generator=g),
             "labels": torch.randint(0, 2, (s.train_batch,), generator=g)}
    steppers = {}
    for name, model in (("ours", ours), ("reference", ref)):
        model.train()
        optimizer = make_optimizer(model, lr=1e-5, weight_decay=0.01)
        trainer = TrainState(net=model, model=model, optimizer=optimizer,
                          scheduler=linear_schedule(optimizer, 0, 10**9), scaler=precision.grad_scaler(),
                          precision=precision, config=TrainConfig())
        steppers[name] = lambda t=trainer: train_step(t, [batch], step=1)
    memory = {name: peak_memory(fn, device) for name, fn in steppers.items()}
    times = best_times(steppers, args.repeats, device, warmup=2)
    peak, peak_name = peak_tflops(device, args.peak_tflops)
    flops = training_flops(non_embedding_parameters(ours), s.config["num_hidden_layers"], s.config["hidden_size"],
                           s.train_batch, s.train_seq)
    result = {"batch": s.train_batch, "seq": s.train_seq, "peak_tflops": peak, "peak_source": peak_name,
              "flops_per_step": flops}
    for name, t in times.items():
        result[name] = {"seconds": t, "sequences_per_s": s.train_batch / t, "peak_memory_gib": memory[name],
                        "mfu": None if peak is None else flops / t / (peak * 1e12)}
    result["speedup"] = times["reference"] / times["ours"]
    return result


def bench_inference(s: Sizes, precision: Precision, args) -> list[dict]:
    device = precision.device
    ours, ref = pair("MegatronBertForSequenceClassification", s.config, device, num_labels=2)
    ours.eval(), ref.eval()
    rows = []
    for batch, seq in s.infer:
        ids = torch.randint(5, s.config["vocab_size"], (batch, seq), device=device)

        def run(model, ids=ids):
            with torch.no_grad(), precision.autocast():
                return model(input_ids=ids).logits

        times = best_times({"ours": lambda: run(ours), "reference": lambda: run(ref)}, args.repeats, device)
        rows.append({"batch": batch, "seq": seq, "ours_sequences_per_s": batch / times["ours"],
                     "reference_sequences_per_s": batch / times["reference"],
                     "speedup": times["reference"] / times["ours"]})
    return rows


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first new-token index where two (B, T) outputs differ in any row, or None if identical."""
    if a.shape == b.shape and torch.equal(a, b):
        return None
    n = min(a.shape[1], b.shape[1])
    differs = (a[:, :n] != b[:, :n]).any(0).nonzero()
    return int(differs[0]) if len(differs) else n


def bench_generation(s: Sizes, precision: Precision, args) -> list[dict]:
    device = precision.device
    ours, ref = pair("MegatronBertForCausalLM", s.config, device, is_decoder=True)
    ours.eval(), ref.eval()
    modes = {"dynamic": dict(cache="dynamic"), "static": dict(cache="static")}
    if args.compile:
        modes["compiled"] = dict(compile=True)
    rows = []
    for batch in s.gen_batches:
        ids = torch.randint(5, s.config["vocab_size"], (batch, s.gen_prompt), device=device)
        outputs = {}

        def ours_run(kwargs, ids=ids):
            with precision.autocast():
                return ours.generate(ids, max_new_tokens=s.gen_new, **kwargs)

        def ref_run(ids=ids):
            with torch.no_grad(), precision.autocast():
                return ref.generate(ids, max_new_tokens=s.gen_new, min_new_tokens=s.gen_new, do_sample=False,
                                    pad_token_id=0)

        runs = {name: (lambda kw=kw, name=name, out=outputs: out.__setitem__(name, ours_run(kw)))
                for name, kw in modes.items()}
        runs["reference"] = lambda out=outputs: out.__setitem__("reference", ref_run())
        times = best_times(runs, args.repeats, device)
        n = batch * s.gen_new
        row = {"batch": batch, "new_tokens": s.gen_new, "reference_tokens_per_s": n / times["reference"]}
        for name in modes:
            row[f"{name}_tokens_per_s"] = n / times[name]
            row[f"{name}_speedup"] = times["reference"] / times[name]
            row[f"{name}_first_difference"] = first_difference(outputs[name], outputs["reference"])
        rows.append(row)
    return rows


def fmt(x, spec=".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(results: dict) -> None:
    if "training" in results:
        report_training(results["training"], results["precision"])
    if "inference" in results:
        print("\n2. inference (no grad), sequences/s")
        for r in results["inference"]:
            print(f"   batch {r['batch']:>3} seq {r['seq']:>4}: ours {r['ours_sequences_per_s']:9.1f}   "
                  f"reference {r['reference_sequences_per_s']:9.1f}   {r['speedup']:.2f}x")
    if "generation" in results:
        print("\n3. greedy generation, new tokens/s (ours / reference; where the tokens first differ, if they do)")
        for r in results["generation"]:
            modes = [k.removesuffix("_tokens_per_s") for k in r
                     if k.endswith("_tokens_per_s") and k != "reference_tokens_per_s"]
            parts = [f"{m} {r[m + '_tokens_per_s']:8.1f} ({r[m + '_speedup']:.2f}x, {same(r[m + '_first_difference'])})"
                     for m in modes]
            print(f"   batch {r['batch']:>3}: reference {r['reference_tokens_per_s']:8.1f}   " + "   ".join(parts))


def same(first_difference: int | None) -> str:
    return "same tokens" if first_difference is None else f"differs from token {first_difference}"


def report_training(t: dict, precision: str) -> None:
    print(f"\n1. fine-tuning step, sequence classification, batch {t['batch']} x seq {t['seq']}, "
          f"{precision}")
    print(f"   MFU = (6 N tokens + 12 L H B T^2) / time / peak; peak {fmt(t['peak_tflops'])} TFLOP/s "
          f"({t['peak_source']}); {t['flops_per_step'] / 1e12:.3g} TFLOP per step")
    for name in ("ours", "reference"):
        r = t[name]
        print(f"   {name:>9}: {r['sequences_per_s']:9.1f} seq/s   MFU {fmt(r['mfu'] and 100 * r['mfu'])} %   "
              f"peak memory {fmt(r['peak_memory_gib'], '.2f')} GiB")
    print(f"   ours / reference: {t['speedup']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds, any device)")
    parser.add_argument("--device", default=None, help="default: the first GPU, else the CPU")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time generate(compile=True)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--parts", nargs="+", default=["training", "inference", "generation"],
                        choices=["training", "inference", "generation"])
    args = parser.parse_args()
    precision = choose_precision(args.device, args.precision)
    device = precision.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"precision: {precision.reason}; {'smoke sizes' if args.smoke else 'Megatron-BERT-345M shape'}")
    s = sizes(args)
    results = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
               "precision": precision.reason, "smoke": args.smoke}
    benches = {"training": bench_training, "inference": bench_inference, "generation": bench_generation}
    for part in args.parts:
        start = time.perf_counter()
        results[part] = benches[part](s, precision, args)
        results[f"{part}_seconds"] = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:  # after every part: a run stopped by a time limit keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
    report(results)


if __name__ == "__main__":
    main()
