"""Task-specific decoding of raw model outputs (numpy only, like the rest of the runtime)."""
