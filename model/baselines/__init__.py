"""Baseline models: most popular, incremental MF, sequential item-kNN."""
