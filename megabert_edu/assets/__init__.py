"""Weights that ship with the package, trained by scripts/pretrain_tiny.py (see README.md here).

    from megabert_edu.assets import TINY, TINY_CAUSAL
    model = MegatronBertForPreTraining.from_pretrained(TINY)      # or ForMaskedLM: MLM head only
    tokenizer = WordPieceTokenizer.from_pretrained(TINY)
"""

from pathlib import Path

ASSETS = Path(__file__).parent
TINY = ASSETS / "megabert-tiny"  # pre-LN, 4 layers, hidden 256, vocab 8000: MLM + NSP
TINY_CAUSAL = ASSETS / "megabert-tiny-causal"  # the same model trained further as a left-to-right LM

__all__ = ["ASSETS", "TINY", "TINY_CAUSAL"]
