"""The interest model: embeddings blended with count and content signals."""
