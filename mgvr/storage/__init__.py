"""Storage layer: the index directory, its SQLite catalog, FAISS coarse index and Parquet fine
store. Knows nothing about torch models: vectors come in and go out as numpy arrays."""
