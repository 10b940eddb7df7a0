"""Storage: the seekable lz4 container, the SQLite index and retention."""
