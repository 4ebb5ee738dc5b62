"""Operating EDM: retention of what grows without end, and `edm doctor`'s checks (docs/operations.md)."""
