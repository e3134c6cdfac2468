"""Thin Prefect flows over the library, one module per stage (`python -m flows.<name>`)."""
