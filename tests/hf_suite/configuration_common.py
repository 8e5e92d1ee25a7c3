"""Port of transformers' tests/test_configuration_common.py (ConfigTester) and its config_common_kwargs.

Changed from the original: nothing but imports, one key of config_common_kwargs (see below), and the
composite-config flag read under its 4.57 name (has_no_defaults_at_init; is_composition before).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile

import torch

# transformers' tests/utils/test_configuration_utils.py: a non-default value for every PretrainedConfig field.
# One change: pruned_heads {"a": 1} -> {0: [1]}. transformers stores any dict; our config validates it as
# {layer: [heads]} (issue 9), so a value that names no layer is an error by design.
config_common_kwargs = {
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "torchscript": True,
    "torch_dtype": "float16", "use_bfloat16": True, "tf_legacy_loss": True, "pruned_heads": {0: [1]},
    "tie_word_embeddings": False, "is_decoder": True, "cross_attention_hidden_size": 128,
    "add_cross_attention": True, "tie_encoder_decoder": True, "max_length": 50, "min_length": 3,
    "do_sample": True, "early_stopping": True, "num_beams": 3, "num_beam_groups": 3, "diversity_penalty": 0.5,
    "temperature": 2.0, "top_k": 10, "top_p": 0.7, "typical_p": 0.2, "repetition_penalty": 0.8,
    "length_penalty": 0.8, "no_repeat_ngram_size": 5, "encoder_no_repeat_ngram_size": 5, "bad_words_ids": [1, 2, 3],
    "num_return_sequences": 3, "chunk_size_feed_forward": 5, "output_scores": True, "return_dict_in_generate": True,
    "forced_bos_token_id": 2, "forced_eos_token_id": 3, "remove_invalid_values": True,
    "architectures": ["BertModel"], "finetuning_task": "translation", "id2label": {0: "label"},
    "label2id": {"label": "0"}, "tokenizer_class": "BertTokenizerFast", "prefix": "prefix", "bos_token_id": 6,
    "pad_token_id": 7, "eos_token_id": 8, "sep_token_id": 9, "decoder_start_token_id": 10,
    "exponential_decay_length_penalty": (5, 1.01), "suppress_tokens": [0, 1], "begin_suppress_tokens": 2,
    "task_specific_params": {"translation": "some_params"}, "problem_type": "regression",
}


class ConfigTester:
    def __init__(self, parent, config_class=None, has_text_modality=True, common_properties=None, **kwargs):
        self.parent = parent
        self.config_class = config_class
        self.has_text_modality = has_text_modality
        self.inputs_dict = kwargs
        self.common_properties = common_properties

    def create_and_test_config_common_properties(self):
        config = self.config_class(**self.inputs_dict)
        common_properties = (["hidden_size", "num_attention_heads", "num_hidden_layers"]
                             if self.common_properties is None else self.common_properties)
        if self.has_text_modality:
            common_properties.extend(["vocab_size"])
        for prop in common_properties:  # getters
            self.parent.assertTrue(hasattr(config, prop), msg=f"`{prop}` does not exist")
        for idx, name in enumerate(common_properties):  # setters
            try:
                setattr(config, name, idx)
                self.parent.assertEqual(getattr(config, name), idx, msg=f"`{name} value {idx} expected")
            except NotImplementedError:  # a config may not implement a setter (none here)
                pass
        for idx, name in enumerate(common_properties):  # constructor keywords
            try:
                config = self.config_class(**{name: idx})
                self.parent.assertEqual(getattr(config, name), idx, msg=f"`{name} value {idx} expected")
            except NotImplementedError:
                pass

    def create_and_test_config_to_json_string(self):
        config = self.config_class(**self.inputs_dict)
        obj = json.loads(config.to_json_string())
        for key, value in self.inputs_dict.items():
            self.parent.assertEqual(obj[key], value)

    def create_and_test_config_to_json_file(self):
        config_first = self.config_class(**self.inputs_dict)
        with tempfile.TemporaryDirectory() as tmpdirname:
            json_file_path = os.path.join(tmpdirname, "config.json")
            config_first.to_json_file(json_file_path)
            config_second = self.config_class.from_json_file(json_file_path)
        self.parent.assertEqual(config_second.to_dict(), config_first.to_dict())

    def create_and_test_config_from_and_save_pretrained(self):
        config_first = self.config_class(**self.inputs_dict)
        with tempfile.TemporaryDirectory() as tmpdirname:
            config_first.save_pretrained(tmpdirname)
            config_second = self.config_class.from_pretrained(tmpdirname)
        self.parent.assertEqual(config_second.to_dict(), config_first.to_dict())
        with self.parent.assertRaises(OSError):
            self.config_class.from_pretrained(f".{tmpdirname}")

    def create_and_test_config_from_and_save_pretrained_subfolder(self):
        config_first = self.config_class(**self.inputs_dict)
        subfolder = "test"
        with tempfile.TemporaryDirectory() as tmpdirname:
            sub_tmpdirname = os.path.join(tmpdirname, subfolder)
            config_first.save_pretrained(sub_tmpdirname)
            config_second = self.config_class.from_pretrained(tmpdirname, subfolder=subfolder)
        self.parent.assertEqual(config_second.to_dict(), config_first.to_dict())

    def create_and_test_config_with_num_labels(self):
        config = self.config_class(**self.inputs_dict, num_labels=5)
        self.parent.assertEqual(len(config.id2label), 5)
        self.parent.assertEqual(len(config.label2id), 5)
        config.num_labels = 3
        self.parent.assertEqual(len(config.id2label), 3)
        self.parent.assertEqual(len(config.label2id), 3)

    def check_config_can_be_init_without_params(self):
        # transformers 4.57 names this flag has_no_defaults_at_init (is_composition before)
        if getattr(self.config_class, "has_no_defaults_at_init", False):
            with self.parent.assertRaises(ValueError):
                self.config_class()
        else:
            self.parent.assertIsNotNone(self.config_class())

    def check_config_arguments_init(self):
        kwargs = copy.deepcopy(config_common_kwargs)
        config = self.config_class(**kwargs)
        wrong_values = []
        for key, value in config_common_kwargs.items():
            if key == "torch_dtype":
                if config.torch_dtype != torch.float16:
                    wrong_values.append(("torch_dtype", config.torch_dtype, torch.float16))
            elif getattr(config, key) != value:
                wrong_values.append((key, getattr(config, key), value))
        if wrong_values:
            errors = "\n".join(f"- {v[0]}: got {v[1]} instead of {v[2]}" for v in wrong_values)
            raise ValueError(f"The following keys were not properly set in the config:\n{errors}")

    def run_common_tests(self):
        self.create_and_test_config_common_properties()
        self.create_and_test_config_to_json_string()
        self.create_and_test_config_to_json_file()
        self.create_and_test_config_from_and_save_pretrained()
        self.create_and_test_config_from_and_save_pretrained_subfolder()
        self.create_and_test_config_with_num_labels()
        self.check_config_can_be_init_without_params()
        self.check_config_arguments_init()
