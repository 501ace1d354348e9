"""Exercise 5: a matrix memory trained by one gradient step per token (see README.md)."""
