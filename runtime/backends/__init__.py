"""Backends, one module per library; each is imported only when an artifact needs it."""
