"""End-to-end certification pipelines (one module per method)."""
