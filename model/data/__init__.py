"""Event sources: data set loaders and the synthetic drift stream."""
