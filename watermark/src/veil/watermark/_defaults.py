"""Defaults shared by the library, the CLI and the enclave, in a module that imports nothing."""

__all__ = ["DEFAULT_EMBED_EPOCHS"]

# Fine-tuning epochs of an embedding (the checkpoint kept is the least damaging one with the
# mark in, so more epochs give it more candidates; docs/WATERMARK.md "Accuracy").
DEFAULT_EMBED_EPOCHS = 120
