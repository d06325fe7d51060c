"""Distributions the models are made of: observation models p(x|z), posterior families q(z|x)
(diagonal and full Gaussian, planar and IAF flows) and priors p(z) (N(0, I), mixtures, VampPrior)."""

from .observation import (  # noqa: F401
    OBSERVATIONS,
    BernoulliObservation,
    GaussianObservation,
    IndependentBernoulli,
    LearnedGaussianObservation,
    Observation,
    PosteriorMultivariateNormal,
    PosteriorNormal,
    bernoulli_log_prob,
    build_observation,
    diagonal_gaussian,
    diagonal_gaussian_log_prob_matrix,
    fp32_inputs,
    full_precision,
    is_diagonal_gaussian,
    kl_per_dimension,
    posterior_gaussian,
    standard_normal,
    stop_gradient,
)
