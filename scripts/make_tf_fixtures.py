"""Write the TensorFlow checkpoint fixtures in tests/fixtures/tf with real TensorFlow.

TensorFlow is NOT a dependency of megabert_edu; the tests read these committed files with our own
reader. To regenerate them, put TensorFlow in a throw-away environment:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/make_tf_fixtures.py              # all of them
    /tmp/tfvenv/bin/python scripts/make_tf_fixtures.py --shipped    # only megabert-tiny-tf/

It writes three checkpoints, each with the values TensorFlow itself reads back from it
(``expected.npz``; bfloat16 widened to float32, which is exact):

    google/    a tiny BERT in Google's names (post-LN), with adam_m/adam_v slots and global_step,
               written by tf.compat.v1.train.Saver like Google's own BERT checkpoints
    megatron/  the same tiny model in Megatron's names (pre-LN: attention/ln, layer_N/ln, encoder/ln)
    dtypes/    float32/float16/bfloat16/float64/int32/int64/bool/string, scalars to 3-D, a zero-size
               tensor, in 2 shards

and the shipped teaching model, megabert_edu/assets/megabert-tiny, as a Megatron-named TF checkpoint in
tests/fixtures/megabert-tiny-tf/ (float16, as stored in model.safetensors; with Google's
bert_config.json and the tokenizer files), so notebook 02 can read trained weights written by TensorFlow.
(A test fixture, not package data: the installed package keeps only the PyTorch copy.)
The TF names come from the library's own table (``state_dict_to_tf``), computed by the library's
Python (``MEGABERT_PYTHON``, default .venv/bin/python), since this environment has no PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "tf")
SHIPPED = os.path.join(REPO, "megabert_edu", "assets", "megabert-tiny")
SHIPPED_TF = os.path.join(REPO, "tests", "fixtures", "megabert-tiny-tf")
LIBRARY_PYTHON = os.environ.get("MEGABERT_PYTHON", os.path.join(REPO, ".venv", "bin", "python"))
CONFIG = {  # Google's bert_config.json fields, for a model small enough to commit
    "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 24, "type_vocab_size": 2,
    "initializer_range": 0.02,
}  # fmt: skip

# Run by the library's Python: the shipped weights under their TF names, exactly as stored (float16).
EXPORT = """
import sys
import numpy as np
from megabert_edu.checkpoints.hf import read_state_dict
from megabert_edu.checkpoints.tf import state_dict_to_tf
np.savez(sys.argv[2], **state_dict_to_tf(read_state_dict(sys.argv[1])))
"""


def bert_variables(megatron: bool, seed: int) -> dict[str, np.ndarray]:
    """Random weights for a BERT pre-training model, named the way its TF code names them."""
    rng = np.random.default_rng(seed)
    H, I, V = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    out: dict[str, np.ndarray] = {}

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        out[name] = (rng.standard_normal(shape) * scale).astype(np.float32)

    def dense(scope: str, n_in: int, n_out: int) -> None:  # TF kernels are [in, out]
        tensor(f"{scope}/kernel", n_in, n_out)
        tensor(f"{scope}/bias", n_out, scale=0.05)

    def norm(scope: str) -> None:
        out[f"{scope}/gamma"] = (1 + rng.standard_normal(H) * 0.1).astype(np.float32)
        tensor(f"{scope}/beta", H, scale=0.05)

    tensor("bert/embeddings/word_embeddings", V, H, scale=0.5)
    tensor("bert/embeddings/position_embeddings", CONFIG["max_position_embeddings"], H, scale=0.5)
    tensor("bert/embeddings/token_type_embeddings", CONFIG["type_vocab_size"], H, scale=0.5)
    if not megatron:
        norm("bert/embeddings/LayerNorm")
    for i in range(CONFIG["num_hidden_layers"]):
        layer = f"bert/encoder/layer_{i}"
        if megatron:
            norm(f"{layer}/attention/ln")
        for part in ("query", "key", "value"):
            dense(f"{layer}/attention/self/{part}", H, H)
        dense(f"{layer}/attention/output/dense", H, H)
        norm(f"{layer}/ln" if megatron else f"{layer}/attention/output/LayerNorm")
        dense(f"{layer}/intermediate/dense", H, I)
        dense(f"{layer}/output/dense", I, H)
        if not megatron:
            norm(f"{layer}/output/LayerNorm")
    if megatron:
        norm("bert/encoder/ln")
    dense("bert/pooler/dense", H, H)
    dense("cls/predictions/transform/dense", H, H)
    norm("cls/predictions/transform/LayerNorm")
    tensor("cls/predictions/output_bias", V, scale=0.05)
    tensor("cls/seq_relationship/output_weights", 2, H)  # Google stores this one [out, in]
    tensor("cls/seq_relationship/output_bias", 2, scale=0.05)
    return out


def save_like_google(prefix: str, weights: dict[str, np.ndarray], seed: int) -> None:
    """TF1 graph mode + Saver, with Adam slots and a global step, as BERT's run_pretraining.py left them."""
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default():
        variables = []
        for name, value in weights.items():
            variables.append(tf.compat.v1.get_variable(name, initializer=value))
            for slot in ("adam_m", "adam_v"):
                slot_value = np.abs(rng.standard_normal(value.shape)).astype(np.float32) * 1e-3
                variables.append(tf.compat.v1.get_variable(f"{name}/{slot}", initializer=slot_value))
        variables.append(tf.compat.v1.get_variable("global_step", initializer=np.int64(1000)))
        saver = tf.compat.v1.train.Saver(variables, save_relative_paths=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)


def save_dtypes(prefix: str) -> None:
    """Many dtypes in two shards, written the way a sharded Saver does it: one bundle per shard
    (the SaveV2 op), then MergeV2Checkpoints joins the indexes and renames the data files."""
    rng = np.random.default_rng(3)
    shards = [
        {
            "a/f32": rng.standard_normal((16, 12)).astype(np.float32),
            "a/f16": rng.standard_normal((3, 5)).astype(np.float16),
            "a/bf16": tf.cast(rng.standard_normal((7, 6)).astype(np.float32), tf.bfloat16),
            "a/f32_scalar": np.float32(3.25),
            "a/f64": rng.standard_normal((2, 2, 3)),
        },
        {
            "b/i32": rng.integers(-(2**31), 2**31 - 1, (4, 3), dtype=np.int32),
            "b/i64": rng.integers(-(2**62), 2**62, (5,), dtype=np.int64),
            "b/i64_scalar": np.int64(-123456789012),
            "b/flag": np.array([True, False, True]),
            "b/empty": np.zeros((0, 3), np.float32),
            "b/words": np.array([b"alpha", b"", b"\xce\xb2eta-\x00-bytes"], dtype=object),
        },
    ]
    parts = []
    for i, tensors in enumerate(shards):
        part = f"{prefix}_temp/part-{i:05d}-of-{len(shards):05d}"
        names = sorted(tensors)
        tf.raw_ops.SaveV2(
            prefix=part,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(tensors[n]) for n in names],
        )
        parts.append(part)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=True)


def write_expected(prefix: str) -> None:
    """Store what TensorFlow's own reader returns, for bit-for-bit comparison without TensorFlow."""
    reader = tf.train.load_checkpoint(prefix)
    arrays, strings = {}, {}
    for name in sorted(reader.get_variable_to_dtype_map()):
        value = reader.get_tensor(name)
        if reader.get_variable_to_dtype_map()[name] == tf.string:
            strings[name] = [bytes(v).hex() for v in np.asarray(value, dtype=object).reshape(-1)]
            continue
        if value.dtype.name == "bfloat16":
            value = value.astype(np.float32)  # exact
        arrays[name] = np.asarray(value)
    folder = os.path.dirname(prefix)
    np.savez_compressed(os.path.join(folder, "expected.npz"), **arrays)
    with open(os.path.join(folder, "expected_strings.json"), "w") as f:
        json.dump(strings, f, indent=1, sort_keys=True)
    print(f"{prefix}: {len(arrays) + len(strings)} tensors")


def save_shipped_model() -> None:
    """megabert-tiny (MLM + NSP) -> megabert-tiny-tf/model.ckpt, written by a TF1 Saver, dtypes kept."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "weights.npz")
        subprocess.run([LIBRARY_PYTHON, "-c", EXPORT, SHIPPED, npz], check=True, cwd=REPO)
        with np.load(npz) as f:
            weights = {name: f[name] for name in f.files}
    if os.path.isdir(SHIPPED_TF):
        shutil.rmtree(SHIPPED_TF)
    os.makedirs(SHIPPED_TF)
    prefix = os.path.join(SHIPPED_TF, "model.ckpt")
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(name, initializer=value, dtype=tf.as_dtype(value.dtype))
                     for name, value in sorted(weights.items())]
        saver = tf.compat.v1.train.Saver(variables, save_relative_paths=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)
    with open(os.path.join(SHIPPED, "config.json")) as f:
        ours = json.load(f)
    # Google's bert_config.json has only these fields; the "ln" names say pre-LN (Megatron).
    google = {k: ours[k] for k in (*CONFIG, "layer_norm_eps")}
    with open(os.path.join(SHIPPED_TF, "bert_config.json"), "w") as f:
        json.dump(google, f, indent=2)
    for name in ("vocab.txt", "tokenizer_config.json"):  # WordPieceTokenizer.from_pretrained(SHIPPED_TF)
        shutil.copy(os.path.join(SHIPPED, name), SHIPPED_TF)
    reader = tf.train.load_checkpoint(prefix)  # TensorFlow reads back what it wrote
    for name, value in weights.items():
        assert np.array_equal(reader.get_tensor(name), value), name
    size = sum(os.path.getsize(os.path.join(SHIPPED_TF, f)) for f in os.listdir(SHIPPED_TF))
    print(f"wrote {SHIPPED_TF} ({len(weights)} tensors, {size / 1e6:.1f} MB) with TensorFlow {tf.__version__}",
          file=sys.stderr)


def write_test_fixtures() -> None:
    """The three checkpoints in tests/fixtures/tf (deleted and written anew)."""
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for scheme, megatron in (("google", False), ("megatron", True)):
        folder = os.path.join(OUT, scheme)
        os.makedirs(folder)
        with open(os.path.join(folder, "bert_config.json"), "w") as f:
            json.dump(CONFIG, f, indent=2)
        prefix = os.path.join(folder, "model.ckpt")
        save_like_google(prefix, bert_variables(megatron, seed=0 if not megatron else 1), seed=2)
        write_expected(prefix)
    os.makedirs(os.path.join(OUT, "dtypes"))
    save_dtypes(os.path.join(OUT, "dtypes", "ckpt"))
    write_expected(os.path.join(OUT, "dtypes", "ckpt"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB) with TensorFlow {tf.__version__}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipped", action="store_true", help="only write tests/fixtures/megabert-tiny-tf")
    args = parser.parse_args()
    if not args.shipped:
        write_test_fixtures()
    save_shipped_model()


if __name__ == "__main__":
    main()
