"""Small experiments that train in seconds on a CPU and check themselves against a closed form.

``python -m models.experiments.lsa_gd --out results/lsa_gd``: one linear self-attention layer
learns one step of gradient descent on in-context linear regression.
"""
