"""protos/src/veil/v1."""
