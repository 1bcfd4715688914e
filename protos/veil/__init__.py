"""protos/veil."""
