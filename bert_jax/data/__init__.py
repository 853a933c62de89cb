"""Data pipelines for bert_jax (pre-training data creation and readers; no jax import)."""
