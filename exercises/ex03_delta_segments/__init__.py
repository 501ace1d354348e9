"""Exercise 3: a segment of the delta rule as a linear map of its entering state (see README.md)."""
