"""The interest model, baselines, loaders and evaluator. Never imports Kafka."""

__all__: list[str] = []
