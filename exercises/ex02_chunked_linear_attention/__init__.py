"""Exercise 2: the chunked form of linear attention (see README.md)."""
