"""enclave/tee."""
