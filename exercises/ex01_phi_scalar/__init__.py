"""Exercise 1: the operator Φ of a scalar-decay mixer (see README.md)."""
