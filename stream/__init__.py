"""Everything that touches Kafka: config, broker, topics, runtimes, CLI."""

__all__: list[str] = []
