"""Shared test helpers: tiny models and corpora, hand-made batches."""
