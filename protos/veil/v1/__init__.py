"""protos/veil/v1."""
