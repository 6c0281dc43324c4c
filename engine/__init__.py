"""What a worker does with a micro-batch, whatever the transport (no Kafka client)."""
