"""Gaussian posteriors over a network's weights: KL, sound Monte-Carlo risk, fitting.

The certified classifier is the *stochastic* network Q = N(μ, diag σ²), not the point
weights of the checkpoint.
"""
