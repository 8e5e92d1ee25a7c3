"""Hugging Face's own MegatronBert model tests, ported to run against transformers (control) and megabert_edu."""
