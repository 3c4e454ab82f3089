"""The Raspberry Pi artifacts checked on (emulated) arm64: stages/arm64/verify.py."""
