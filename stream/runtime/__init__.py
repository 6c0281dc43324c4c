"""The runtimes: Kafka clients around the engine's batch driver."""
