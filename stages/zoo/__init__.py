"""Model definitions that live in this project (``model.module._target_`` points here)."""
