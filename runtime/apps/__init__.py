"""Applications built on the runtime (``python -m runtime.apps.<name>``). They add OpenCV and scipy to
the runtime's numpy/Pillow, and, like the rest of runtime/, stay free of torch, hydra and dvc."""
