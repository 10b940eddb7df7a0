"""Root-cause rules: one module per rule, each reading a clean analysis context."""
