"""Offline replays of a stream through the engine: the evaluator's views."""
