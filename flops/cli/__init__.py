"""The `flops` command line."""
