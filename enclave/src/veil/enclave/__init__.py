"""veil.enclave."""
