"""What the evaluator measures: protocols and metrics."""
