"""transformers.Trainer trains and evaluates our MegatronBertForSequenceClassification unchanged (issue 8).

Trainer reads the forward signature to find the label column and to drop unused columns, calls
model(**batch) and reads outputs like ModelOutput. The data is a plain list of dicts (no `datasets`),
the run is offline (no hub, no reporting) and takes a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import megabert_edu as mb

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer needs it (pyproject's test extra)


def toy_dataset(n: int, seed: int) -> list[dict]:
    """Label 0: tokens from 10..29, label 1: tokens from 30..49. Learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        ids = torch.randint(10 + 20 * label, 30 + 20 * label, (12,), generator=g)
        ids[0] = 1  # [CLS]
        rows.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long),
                     "labels": torch.tensor(label), "unused_text": f"row {i}"})  # pruned by Trainer
    return rows


def accuracy(prediction: transformers.EvalPrediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def test_trainer_trains_and_evaluates_our_model(tmp_path):
    torch.manual_seed(0)
    config = mb.MegatronBertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = mb.MegatronBertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=32,
        num_train_epochs=6, learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=toy_dataset(64, seed=1),
                                   eval_dataset=toy_dataset(32, seed=2), compute_metrics=accuracy)
    assert trainer.label_names == ["labels"]  # found in our forward signature

    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24  # 64 rows / 16 per step * 6 epochs
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert {"eval_loss", "eval_accuracy", "epoch"} <= set(after)
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] >= 0.9
