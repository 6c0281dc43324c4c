"""Per-partition user state: store protocol, RocksDB and in-memory stores, codecs."""

__all__: list[str] = []
