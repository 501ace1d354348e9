"""Exercise 6: the WY/UT form of a DeltaNet chunk, what the chunked delta-rule kernels compute (see README.md)."""
