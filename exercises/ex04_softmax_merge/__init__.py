"""Exercise 4: merging two softmax states, the step flash attention and Aaren are built on (see README.md)."""
