"""Plain, testable mechanism behind the stage entry points (no Hydra ``main`` here)."""
