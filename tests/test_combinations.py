"""The guard: every combination the configuration accepts (likelihood x posterior x prior x
objective x gradient estimator x KL mode x free bits x stochastic layers x backbone) trains on the
gradient it claims and reports the bound it claims, and every combination it refuses says why.

The table: the full product of the axes below is built once through ``config.build`` (the home of
the rules: the option tables ``MODEL_OPTIONS``/``VAE_TRAIN_ONLY``, each objective's declared
options and gradient estimators, and the check functions ``check_estimator``,
``check_combination``, ``check_layers``, ...); its verdict, not a formula written here, splits it
into accepted and refused combinations, so a combination that becomes accepted is checked here
without a change to this file, and one that cannot pass must be refused. One table test then
checks each refused one's ConfigError (a one-line reason that names an option the combination
sets) and that each accepted one is consistent with what its objective declares, and one test
per backbone builds every accepted combination and asks the hand-derived ELBO step
(``fused.FusedELBO``) whether it takes it (exactly its documented domain; a one-line reason for
every other).

For each accepted combination (mlp backbone), on a tiny float64 VAE:
- the expected encoder and decoder gradients of the objective, as the trainer builds it, equal
  the expected gradients of a plain reparameterized estimate of the same objective written out
  here from its definition (for PIWAE: L_MK for the decoder, MIWAE(M, K) for the encoder), within
  a tolerance from the Monte-Carlo error of both;
- the reported ``bound``, ``reconstruction`` and ``kl`` equal their definitions on the same
  particles;
- without free bits, splitting the batch (torchrun's processes, in one) gives the same values
  and gradients;
- where the hand-derived ELBO step takes it, its values and gradients equal autograd's.

Device placement (forward and backward on the ``meta`` device) and mixed precision (fp32
densities under bf16/fp16 autocast) are checked on a covering array rather than the full
product: a deterministic greedy all-pairs design over the accepted combinations (``_covering``),
in which every value of every axis appears, and every pair of values of every two axes that
some accepted combination holds together appears at least once.
- ``meta``: the axes are the 8 combination axes and the backbone (``net``). A tensor lands on the
  wrong device where some code path creates one without taking the input's device: the backbone
  (its layers, reshapes, images), the posterior, prior and likelihood (their constants, flows,
  mixture weights, pseudo-inputs), the objective, estimator, KL mode and free bits (log K,
  weights, stopped copies of q, the free-dimension mask) and the two-layer model. A single axis
  selects each of those paths; a pair of axes is enough to reach the paths that two of them
  share (the free-bits mask computed from the posterior's and prior's per-dimension KL, the
  estimator's stopped posterior, the KL mode's closed form per posterior and prior, the
  backbone's output reshaped by the likelihood, ...). No three-way interaction creates a tensor
  that no pair reaches, so all pairs, not the product, is the design; we take every pair rather
  than arguing which pairs cannot interact, since it costs a few more cases only.
- mixed precision: the same 8 combination axes and the autocast dtype (bf16, fp16) in place of
  the backbone (the heads that take the networks' outputs in fp32 are the posterior's, the
  prior's and the likelihood's; the objective, estimator, KL mode, free bits and layers decide
  which densities are computed from them), all pairs again.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_custom_nets import small
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaelab.core import sharding
from vaelab.core.errors import ConfigError
from vaelab.distributions.observation import stop_gradient
from vaelab.evaluation.diagnostics import parameter_groups
from vaelab.inference.estimators import GRAD_ESTIMATORS, sample_particles
from vaelab.inference.objectives import KL_MODES, OBJECTIVES, get_objective, objective_options, supported_estimators
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config

POSTERIORS = ("gaussian", "full", "planar:2", "iaf:2")
PRIORS = ("standard", "mog:3", "vamp:3")
LIKELIHOODS = ("bernoulli", "gaussian")
FREE_BITS = (0.0, 1.0)  # 1.0 stands for "on": each model gets a lambda between its two dimensions' KLs
LAYERS = (1, 2)  # --layers 2: z = concat(z1, z2) of 2 * LATENT + LATENT numbers
SHAPES = {"elbo": {"k": 3}, "iwae": {"k": 3}, "miwae": {"m": 2, "k": 2}, "ciwae": {"k": 3, "beta": 0.4},
          "piwae": {"m": 2, "k": 2}, "renyi": {"k": 3, "alpha": 0.5}}  # fmt: skip
KL_SCALE = 0.7  # a KL schedule's value mid-way: the general case of every formula that uses it
EVENT, LATENT, BATCH = (6,), 2, 3
FACTORY = "combinations:small"  # your own backbone, --net package.module:Factory, given in nets= (no import)
NETS = ("mlp", "conv", "resnet", FACTORY)  # the backbones; conv and resnet need images, IMAGE on the meta device
AXES = {"likelihood": LIKELIHOODS, "posterior": POSTERIORS, "prior": PRIORS, "objective": tuple(OBJECTIVES.names()),
        "grad_estimator": GRAD_ESTIMATORS, "kl": KL_MODES, "free_bits": FREE_BITS, "layers": LAYERS}  # fmt: skip
DEFAULTS = {"likelihood": "bernoulli", "posterior": "gaussian", "prior": "standard", "objective": "elbo",
            "grad_estimator": "reparam", "kl": "analytic", "free_bits": 0.0, "layers": 1, "net": "mlp"}  # fmt: skip

FACTORIES = {FACTORY: small}  # the custom-nets tests' factory
IMAGE = (1, 4, 4)


def _config(likelihood, posterior, prior, objective, estimator, kl, free_bits, layers=1, net="mlp") -> cfg.RunConfig:
    # an objective with no shape here gets k=3; its gradient and bound tests then ask for its definition
    train = {"objective": objective, "grad_estimator": estimator, "free_bits": free_bits, **SHAPES.get(objective, {"k": 3})}
    if kl != "analytic":
        train["kl"] = kl
    model = {"likelihood": likelihood, "posterior": posterior, "prior": prior, "hidden": [8], "latent_dim": LATENT,
             "net": net, "resnet_channels": 4, "res_blocks": 1}  # fmt: skip
    if layers != 1:
        model["layers"] = layers
    return cfg.build({"model": model, "train": train})


def _verdict(combo) -> str | None:
    """None where the configuration accepts the combination (axes..., net), else its reason."""
    try:
        _config(*combo)
    except ConfigError as exc:
        return str(exc)
    return None


# The table: every combination of the axes and the backbone, with the configuration's verdict.
TABLE = {combo: _verdict(combo) for combo in itertools.product(*AXES.values(), NETS)}
ACCEPTED_NETS = [combo for combo, why in TABLE.items() if why is None]  # (axes..., net)
ACCEPTED = [combo[:-1] for combo in ACCEPTED_NETS if combo[-1] == "mlp"]  # (axes...), the mlp backbone


def _name(combo) -> str:
    likelihood, posterior, prior, objective, estimator, kl, free_bits, layers, *rest = combo
    return "-".join([likelihood, posterior, prior, objective, estimator, kl] + (["freebits"] if free_bits else [])
                    + (["2layers"] if layers == 2 else []) + [str(r).split(":")[-1] for r in rest])  # fmt: skip


def _covering(rows: list[tuple]) -> list[tuple]:
    """A deterministic greedy all-pairs subset of ``rows``: every value of every position, and every
    pair of values at two positions that some row holds together, appears in a chosen row. Each
    step takes the first row (in ``rows``' order) that covers the most pairs still missing."""

    def pairs(row):
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}

    covers = [pairs(row) for row in rows]
    missing = set().union(*covers)
    chosen = []
    while missing:
        best = max(range(len(rows)), key=lambda r: len(covers[r] & missing))
        chosen.append(rows[best])
        missing -= covers[best]
    return chosen


META_CASES = _covering(ACCEPTED_NETS)  # (axes..., net)
HALVES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CASES = _covering([(*combo, half) for combo in ACCEPTED for half in HALVES])  # (axes..., "bf16" | "fp16")


def test_the_covering_arrays_cover_every_value_and_every_pair():
    for cases, rows in ((META_CASES, ACCEPTED_NETS), (PRECISION_CASES, [(*c, h) for c in ACCEPTED for h in HALVES])):
        assert set(cases) <= set(rows)  # only accepted combinations
        width = len(rows[0])
        for i, j in itertools.combinations(range(width), 2):
            assert {(r[i], r[j]) for r in cases} == {(r[i], r[j]) for r in rows}, (i, j)
        assert len(cases) < len(rows) / 10  # the point: far fewer than the product


def _set_by(combo) -> list[str]:
    """The options a combination (axes..., net) sets to other than their defaults, as flags."""
    return [f"{name}=" for name, value in zip((*AXES, "net"), combo) if value != DEFAULTS[name] and name != "likelihood"]


def test_the_configuration_refuses_with_a_reason_and_accepts_what_the_objectives_declare():
    """The table test. Each refused combination's ConfigError is one line naming an option the
    combination sets; each accepted one uses only what its objective declares (its gradient
    estimators; kl= and free_bits= only where it takes them); every value of every axis is accepted
    in some combination (so no family is refused outright)."""
    refused = 0
    for combo, why in TABLE.items():
        if why is not None:
            refused += 1
            assert why.strip() and "\n" not in why, (combo, why)
            assert any(flag in why for flag in _set_by(combo)), (combo, why)
            continue
        likelihood, posterior, prior, objective, estimator, kl, free_bits, layers, net = combo
        takes = objective_options(objective)
        assert estimator in supported_estimators(objective), combo
        assert kl == "analytic" or "kl" in takes, combo
        assert not free_bits or "free_bits" in takes, combo
    assert 0 < refused < len(TABLE)
    for i, values in enumerate((*AXES.values(), NETS)):
        assert {c[i] for c in ACCEPTED_NETS} == set(values), i


def _fused_takes(combo) -> bool:
    """The hand-derived step's documented domain: the single-particle, analytic-KL,
    reparameterized ELBO without free bits of a one-layer dense VAE with the diagonal Gaussian
    posterior and the N(0, I) prior, either likelihood (the mlp backbone and a factory's dense
    networks)."""
    likelihood, posterior, prior, objective, estimator, kl, free_bits, layers, net = combo
    return (objective, posterior, prior, estimator, kl, free_bits, layers) == (
        "elbo", "gaussian", "standard", "reparam", "analytic", 0.0, 1) and net in ("mlp", FACTORY)  # fmt: skip


def _single_particle(config):
    options = config.train.objective_options()
    if config.train.objective == "elbo":  # the matrix's ELBO draws k=3, which the step refuses
        options = {**options, "k": 1}
    return get_objective(config.train.objective, **options)


@pytest.mark.parametrize("net", NETS)
def test_every_accepted_combination_builds_and_the_hand_derived_step_takes_exactly_its_domain(net):
    """Every accepted combination of this backbone builds its model and objective; the trainer's
    hand-derived ELBO step (``fused.refusal``) takes exactly its domain (``_fused_takes``) and
    gives every other combination a one-line reason."""
    from vaelab.models import fused

    combos = [c for c in ACCEPTED_NETS if c[-1] == net]
    assert combos
    event = IMAGE if net in ("conv", "resnet") else EVENT
    for combo in combos:
        config = _config(*combo)
        model = model_from_config(config, event, nets=FACTORIES)
        get_objective(config.train.objective, **config.train.objective_options())
        why = fused.refusal(model, _single_particle(config))
        assert (why is None) == _fused_takes(combo), (combo, why)
        assert why is None or (why and "\n" not in why), (combo, why)


FUSED = [c for c in ACCEPTED_NETS if _fused_takes(c)]


@pytest.mark.parametrize("combo", FUSED, ids=_name)
def test_every_combination_the_hand_derived_step_takes_trains_as_autograd_does(combo):
    """For each combination the hand-derived ELBO step takes, in the ELBO's single-particle form,
    its values and gradients equal autograd's in float64 from the same draws (to 1e-10 relative: a
    few dozen roundings of numbers of order 1-100)."""
    from vaelab.models import fused

    likelihood, net = combo[0], combo[-1]
    config = _config(*combo)
    event = IMAGE if net in ("conv", "resnet") else EVENT
    torch.manual_seed(1)
    model = model_from_config(config, event, nets=FACTORIES).double()
    objective = _single_particle(config)
    assert fused.refusal(model, objective) is None
    g = torch.Generator().manual_seed(2)
    x = torch.rand(BATCH, *event, generator=g, dtype=torch.float64)
    x = (x < 0.5).double() if likelihood == "bernoulli" else x
    torch.manual_seed(5)
    got = fused.FusedELBO.build(model, objective).step(x, {"kl_scale": KL_SCALE})
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    want = objective(model, x, kl_scale=KL_SCALE)
    (-want.objective.mean()).backward()
    for field in want._fields:
        torch.testing.assert_close(getattr(got, field), getattr(want, field).detach(), rtol=1e-10, atol=1e-10)
    for p, a in zip(model.parameters(), ours, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def _setup(combo):
    """The model (float64, encoder moved off the prior), data, the objective as the trainer
    builds it, and free bits' lambda for this model."""
    config = _config(*combo)
    torch.manual_seed(1)
    model = model_from_config(config, EVENT).double()
    with torch.no_grad():  # a posterior that is not the prior: larger encoder outputs
        last = [mod for mod in model.encoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
        last.weight.mul_(3.0)
        last.bias.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(BATCH, *EVENT, generator=g, dtype=torch.float64)
    if combo[0] == "bernoulli":
        x = (x < 0.5).double()
    options = config.train.objective_options()
    lam = 0.0
    if options.get("free_bits", 0) > 0:
        with torch.no_grad():
            q, prior = model.encode(x), model.prior()
            per_dim = kl_divergence(q.base_dist, prior.base_dist).mean(0)
        lam = per_dim.mean().item()  # one dimension below lambda, one above
        assert per_dim.min() < lam < per_dim.max()
        options["free_bits"] = lam
    objective = get_objective(config.train.objective, **options)
    return config, model, x, objective, lam


def _detached(q):
    """q with its parameters cut from the graph (the density STL evaluates)."""
    if not isinstance(q, (MultivariateNormal, Independent)):  # the two-layer posterior: its own rule
        return stop_gradient(q)
    if isinstance(q, MultivariateNormal):
        return MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach())
    return Independent(Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach()), 1)


def _reference(config, model, x, lam):
    """The objective written out from its definition, reparameterized, with no estimator tricks:
    returns (encoder's objective, decoder's objective), per example.

    STL inside an importance-weighted bound (K > 1) is a biased estimator by definition (the
    README says so): its expectation is the gradient of the bound with log q's parameters
    detached, which is what the reference computes for it. Its decoder gradient is the bound's.
    """
    t = config.train
    assert t.objective in SHAPES, f"objective= {t.objective} has no definition here: write it out in _reference"
    m, k = t.m if t.objective in ("miwae", "piwae") else 1, t.k
    beta = t.beta if t.beta is not None else {"elbo": 1.0, "ciwae": 0.5}.get(t.objective, 0.0)
    prior = model.prior()
    q = model.encode(x)
    z = q.rsample((m * k,))  # (MK, B, D)
    log_px = model.decode(z).log_prob(x)
    q_density = _detached(q) if t.grad_estimator == "stl" and t.objective != "elbo" else q
    log_pz, log_qz = prior.log_prob(z), q_density.log_prob(z)
    if t.objective == "renyi":  # 1 / (1 - alpha) log mean_k w_k^(1 - alpha), no free bits (not an option)
        lw = log_px + KL_SCALE * (log_pz - log_qz)
        value = (torch.logsumexp((1 - t.alpha) * lw, 0) - math.log(k)) / (1 - t.alpha)
        return value, value
    if t.objective == "elbo":
        rec = log_px.mean(0)
        try:
            kl = kl_divergence(q, prior) if t.kl == "analytic" else None
        except NotImplementedError:
            kl = None
        kl = kl if kl is not None else (log_qz - log_pz).mean(0)
        if lam > 0:  # sum_d max(lambda, KL_d), KL_d the batch mean of each dimension's KL
            per_dim = kl_divergence(q.base_dist, prior.base_dist)  # (B, D)
            free = per_dim.detach().mean(0) < lam
            kl = kl - (per_dim - lam).masked_fill(~free, 0.0).sum(-1)
        value = rec - beta * KL_SCALE * kl
        return value, value
    if lam > 0:  # the free dimensions' coordinates leave log p(z) - log q(z|x), lambda each instead
        per_dim = kl_divergence(q.base_dist, prior.base_dist).detach().mean(0)
        free = per_dim < lam
        ratio = (prior.base_dist.log_prob(z) - q_density.base_dist.log_prob(z)).masked_fill(free, 0.0).sum(-1)
        ratio = ratio - lam * free.sum()
    else:
        ratio = log_pz - log_qz
    lw = (log_px + KL_SCALE * ratio).view(m, k, -1)
    miwae = (torch.logsumexp(lw, 1) - math.log(k)).mean(0)
    if t.objective == "piwae":
        return miwae, torch.logsumexp(lw.flatten(0, 1), 0) - math.log(m * k)
    value = beta * lw.mean((0, 1)) + (1 - beta) * miwae
    return value, value


def _gradients(model, values, groups) -> dict[str, torch.Tensor]:
    """Flattened gradient of each group's own objective (encoder, decoder) w.r.t. its parameters
    (one backward pass where both groups share one objective)."""
    names = ("encoder", "decoder")
    if values[0] is values[1]:
        ps = [p for name in names for p in groups[name]]
        grads = torch.autograd.grad(values[0].mean(), ps, allow_unused=True)
        flat = [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, ps)]
        sizes = [sum(p.numel() for p in groups[name]) for name in names]
        return dict(zip(names, torch.cat(flat).split(sizes)))
    out = {}
    for name, value in zip(names, values):
        ps = groups[name]
        grads = torch.autograd.grad(value.mean(), ps, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, ps)])
    return out


def _paired_difference(draw_a, draw_b, groups: int, replicas: int, seed: int) -> dict[str, tuple]:
    """Mean and standard error of the difference of two gradient estimators, from ``groups``
    independent batch means of ``replicas`` draws each (the data repeated ``replicas`` times), the
    two estimators of a group drawn from the same generator state (common random numbers: where
    both draw the same particles their noise cancels; where not, the difference's standard error
    is that of the two estimates', as from independent draws). Also the mean of ``draw_b``."""
    diffs, bs = [], []
    for group in range(groups):
        torch.manual_seed(seed + group)
        a = draw_a(replicas)
        torch.manual_seed(seed + group)
        b = draw_b(replicas)
        diffs.append({name: a[name] - b[name] for name in a})
        bs.append(b)
    out = {}
    for name in diffs[0]:
        d = torch.stack([s[name] for s in diffs])  # (groups, n_params)
        out[name] = (d.mean(0), d.std(0) / math.sqrt(groups), torch.stack([b[name] for b in bs]).mean(0))
    return out


GROUPS = 8  # a pass costs mostly per operation (tiny nets): few groups; the paired difference keeps the power
REPLICAS = {"score": 2000}  # draws per group; the score function's variance is far larger
REPLICAS_DEFAULT = 250


@pytest.mark.parametrize("combo", ACCEPTED, ids=[_name(c) for c in ACCEPTED])
def test_expected_gradients_are_those_of_the_bound(combo):
    config, model, x, objective, lam = _setup(combo)
    groups = parameter_groups(model)
    replicas = REPLICAS.get(config.train.grad_estimator, REPLICAS_DEFAULT)

    def estimator(n):
        value = objective(model, x.repeat(n, 1), kl_scale=KL_SCALE).objective
        return _gradients(model, (value, value), groups)

    def reference(n):
        return _gradients(model, _reference(config, model, x.repeat(n, 1), lam), groups)

    diff = _paired_difference(estimator, reference, GROUPS, replicas, seed=10)
    for name in ("encoder", "decoder"):
        mean, se, want = diff[name]
        distance = mean.square().sum()
        # E[distance] = the summed variance of the difference when both estimate the same vector;
        # 16 times that is beyond any chi-square tail we would see by chance (P < 1e-4 for one
        # degree of freedom, far smaller for the dozens here)
        noise = se.square().sum()
        relative = (distance.sqrt() / want.norm()).item()
        assert distance <= 16 * noise + 1e-20, (name, relative, (noise.sqrt() / want.norm()).item())


@pytest.mark.parametrize("combo", ACCEPTED, ids=[_name(c) for c in ACCEPTED])
def test_reported_bound_is_its_definition(combo):
    config, model, x, objective, _ = _setup(combo)
    t = config.train
    assert t.objective in SHAPES, f"objective= {t.objective} has no definition here: write its bound out"
    m, k = t.m if t.objective in ("miwae", "piwae") else 1, t.k
    beta = t.beta if t.beta is not None else 0.5
    torch.manual_seed(3)
    res = objective(model, x, kl_scale=KL_SCALE)
    torch.manual_seed(3)
    p = sample_particles(model, x, m * k, reparameterized=t.grad_estimator != "score")
    with torch.no_grad():
        prior = model.prior()
        q = p.q
        log_px = model.decode(p.z).log_prob(x)
        lw = (log_px + prior.log_prob(p.z) - q.log_prob(p.z)).view(m, k, -1)
        try:
            closed = kl_divergence(q, prior)
        except NotImplementedError:
            closed = None
        mc_kl = -(lw.flatten(0, 1) - log_px).mean(0)
        if t.objective == "elbo":
            kl = closed if closed is not None and t.kl == "analytic" else mc_kl
            bound = log_px.mean(0) - kl
        else:
            kl = closed if closed is not None else mc_kl
            l_k = (torch.logsumexp(lw, 1) - math.log(k)).mean(0)
            bound = {
                "iwae": l_k,
                "miwae": l_k,
                "ciwae": beta * lw.mean((0, 1)) + (1 - beta) * l_k,
                "piwae": torch.logsumexp(lw.flatten(0, 1), 0) - math.log(m * k),
                "renyi": (torch.logsumexp((1 - (t.alpha or 0)) * lw.flatten(0, 1), 0) - math.log(k)) / (1 - (t.alpha or 0)),
            }[t.objective]
    torch.testing.assert_close(res.bound.detach(), bound)
    torch.testing.assert_close(res.reconstruction.detach(), log_px.mean(0))
    torch.testing.assert_close(res.kl.detach(), kl)


@pytest.mark.parametrize("combo", META_CASES, ids=_name)
def test_every_combination_keeps_its_tensors_on_the_models_device(combo):
    """Forward and backward on the ``meta`` device, on the covering array over the combination
    axes and the backbones (the module docstring says why all pairs): a tensor created on the CPU
    by mistake (which would break every GPU run of this combination) fails here."""
    net = combo[-1]
    config = _config(*combo)
    event = IMAGE if net in ("conv", "resnet") else EVENT
    model = model_from_config(config, event, nets=FACTORIES).to("meta")
    x = torch.empty(BATCH, *event, device="meta")
    result = get_objective(config.train.objective, **config.train.objective_options())(model, x, kl_scale=KL_SCALE)
    result.objective.mean().backward()
    assert all(value.device.type == "meta" for value in result), result._fields
    assert all(p.grad is None or p.grad.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("case", PRECISION_CASES, ids=_name)
def test_every_combination_keeps_densities_in_fp32_under_mixed_precision(case):
    """Under autocast (precision="bf16-mixed" or "16-mixed") the networks compute in half precision
    while every per-example field of the objective (densities, KL, log-sum-exp) and every gradient
    is fp32: the distribution heads take the networks' outputs in fp32. On the covering array over
    the combination axes and the two half dtypes."""
    *combo, half = case
    half = HALVES[half]
    config = _config(*combo)
    torch.manual_seed(0)
    model = model_from_config(config, EVENT)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]  # fmt: skip
    x = (torch.rand(BATCH, *EVENT, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    objective = get_objective(config.train.objective, **config.train.objective_options())
    with torch.autocast("cpu", dtype=half):
        result = objective(model, x, kl_scale=KL_SCALE)
    for hook in hooks:
        hook.remove()
    assert half in seen  # autocast did reach the networks
    for name, value in zip(result._fields, result):
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all(), name
    result.objective.mean().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("combo", [c for c in ACCEPTED if c[6] == 0.0], ids=_name)
def test_every_combination_gives_the_same_values_and_gradients_when_its_batch_is_split(combo):
    """What torchrun's processes compute, in one process: the batch split 3 + 1 (each part under
    ``sharding.sharded``, from the same generator state) gives each example the values one
    process gives it, and the parts' gradients of the summed objective add up to the whole
    batch's. Free bits decide from the global batch mean, which needs the processes' reduction
    (the two-process training test covers it)."""
    config = _config(*combo)
    torch.manual_seed(1)
    model = model_from_config(config, EVENT).double()
    x = (torch.rand(4, *EVENT, generator=torch.Generator().manual_seed(2), dtype=torch.float64) < 0.5).double()
    objective = get_objective(config.train.objective, **config.train.objective_options())

    def run(rows, shard):
        model.zero_grad()
        torch.manual_seed(3)
        with sharding.sharded(shard):
            result = objective(model, x[rows], kl_scale=KL_SCALE)
        result.objective.sum().backward()
        return result, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = run(slice(0, 4), None)
    parts = [run(slice(0, 3), sharding.Shard(0, 3, 4, reduce=False)), run(slice(3, 4), sharding.Shard(3, 1, 4, reduce=False))]
    for name in whole._fields:
        joined = torch.cat([getattr(part, name) for part, _ in parts])
        torch.testing.assert_close(joined, getattr(whole, name), rtol=1e-9, atol=1e-9, msg=name)
    assert whole_grads.keys() == parts[0][1].keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(parts[0][1][name] + parts[1][1].get(name, 0), grad, rtol=1e-8, atol=1e-10, msg=name)


# -- the VQ-VAE's combinations ------------------------------------------------------------------

VQ_AXES = {"likelihood": ("bernoulli", "gaussian", "gaussian-learned"), "codebook_update": ("loss", "ema"),
           "dead_code_restart": (0, 1), "net": ("mlp", "conv", "resnet")}  # fmt: skip


def _vq_config(likelihood, codebook_update, dead_code_restart, net) -> cfg.RunConfig:
    model = {"model": "vqvae", "likelihood": likelihood, "codebook_update": codebook_update, "net": net,
             "dead_code_restart": dead_code_restart, "resnet_channels": 4, "res_blocks": 1, "codebook_size": 5, "code_dim": 3}  # fmt: skip
    return cfg.build({"model": model})


VQ_ACCEPTED, VQ_REFUSED = [], []
for _combo in itertools.product(*VQ_AXES.values()):
    try:
        _vq_config(*_combo)
    except ConfigError:
        VQ_REFUSED.append(_combo)
    else:
        VQ_ACCEPTED.append(_combo)


def test_the_vqvae_takes_every_likelihood_and_codebook_update_and_only_the_resnet():
    for i, values in enumerate(VQ_AXES.values()):
        assert {c[i] for c in VQ_ACCEPTED} == set(values) - {"mlp", "conv"}
    assert {c[-1] for c in VQ_REFUSED} == {"mlp", "conv"}


@pytest.mark.parametrize("combo", VQ_ACCEPTED, ids=["-".join(map(str, c)) for c in VQ_ACCEPTED])
def test_every_vqvae_combination_trains_and_reports_its_bound(combo):
    """One training step on the CPU (gradient to the encoder and decoder; to the codebook only with
    the codebook loss; the EMA and restarts move it without one), the eval-mode bound as defined
    (reconstruction minus the uniform rate), and forward and backward on the meta device."""
    config = _vq_config(*combo)
    torch.manual_seed(0)
    model = model_from_config(config, IMAGE).double().train()
    x = torch.rand(4, *IMAGE, dtype=torch.float64)
    if combo[0] == "bernoulli":
        x = x.round()
    from vaelab.inference.objectives import vq

    before = model.quantizer.codebook.detach().clone()
    vq(model, x).objective.mean().backward()
    groups = parameter_groups(model)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert (model.quantizer.codebook.grad is not None) == (combo[1] == "loss")
    assert groups["encoder"] and groups["decoder"]
    if combo[1] == "ema":  # the averages moved the codes in the forward pass
        assert not torch.equal(model.quantizer.codebook, before)
    model.eval()
    res = vq(model, x)
    rate = math.prod(model.grid_shape) * math.log(5)
    torch.testing.assert_close(res.bound, res.reconstruction - rate)
    meta = model_from_config(config, IMAGE).to("meta").eval()
    out = vq(meta, torch.empty(2, *IMAGE, device="meta"))
    out.objective.mean().backward()
    assert out.bound.device.type == "meta"


# -- every option one family ignores is refused in one line ---------------------------------------

GIVEN = {  # a valid, non-default value for every option that belongs to some families only
    "posterior": "full", "prior": "mog:3", "inference": "local", "latent_dim": "3", "hidden": "8",
    "activation": "relu", "local_steps": "3", "local_lr": "0.5", "layers": "2",
    "objective": "iwae", "beta": "0.5", "k": "5", "m": "2", "kl": "mc", "grad_estimator": "stl",
    "kl_warmup": "2", "kl_cycles": "2", "free_bits": "1", "alpha": "0.3",
    "codebook_size": "8", "code_dim": "4", "commitment": "0.5", "codebook_update": "ema", "ema_decay": "0.9",
    "dead_code_restart": "5",
    "encoder": "gaussian", "gamma": "2", "feature_layer": "1", "lr_disc": "1e-4", "adam_betas_disc": "0.5,0.999",
    "net_args": '{"width": 4}',
}  # fmt: skip
ADVERSARIAL = ("gan", "vaegan", "aae", "alphagan", "veegan")


def _accepts(model: str, name: str) -> bool:
    """Whether --model takes the option: the model table, the VAE's objective options for the VAE,
    the discriminators' optimizer for the adversarial models."""
    if name in cfg.VAE_TRAIN_ONLY:
        return model == "vae"
    if name in cfg.DISC_TRAIN_ONLY:
        return model in ADVERSARIAL
    return name in cfg.MODEL_OPTIONS[model]


def test_the_option_lists_are_covered():
    specific = {name for names in cfg.MODEL_OPTIONS.values() for name in names}
    assert set(GIVEN) == specific | set(cfg.VAE_TRAIN_ONLY) | set(cfg.DISC_TRAIN_ONLY)
    assert set(cfg.MODEL_OPTIONS) == {"vae", "vqvae", *ADVERSARIAL}


REFUSALS = [(model, name) for model in cfg.MODEL_OPTIONS for name in sorted(GIVEN) if not _accepts(model, name)]


@pytest.mark.parametrize("model, name", REFUSALS, ids=[f"{m}-{n}" for m, n in REFUSALS])
def test_every_option_a_family_ignores_is_a_one_line_exit_2_error(model, name, tmp_path):
    from test_cli import run_cli

    out = tmp_path / "run"
    r = run_cli("train", "--model", model, "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet",
                f"--{name.replace('_', '-')}", GIVEN[name])  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--{name.replace('_', '-')}" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("model", ADVERSARIAL)
def test_patience_is_refused_where_there_is_no_bound(model):
    from test_cli import run_cli

    r = run_cli("train", "--model", model, "--patience", "5", "--out", "never")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no likelihood bound" in r.stderr, r.stderr


# -- the adversarial models' combinations -------------------------------------------------------

ADV_AXES = {"model": ADVERSARIAL, "likelihood": ("bernoulli", "gaussian", "gaussian-learned"),
            "net": ("mlp", "conv", "resnet"), "encoder": ("deterministic", "gaussian"),
            "prior": ("standard", "mog:3", "vamp:3")}  # fmt: skip


def _adv_config(model, likelihood, net, encoder, prior, feature_layer=0) -> cfg.RunConfig:
    options = {"model": model, "likelihood": likelihood, "net": net, "hidden": [8, 6], "latent_dim": LATENT,
               "resnet_channels": 4, "res_blocks": 1}  # fmt: skip
    for name, value, default in (("encoder", encoder, "deterministic"), ("prior", prior, "standard"),
                                 ("feature_layer", feature_layer, 0)):  # fmt: skip
        if value != default:
            options[name] = value
    return cfg.build({"model": options})


ADV_ACCEPTED, ADV_REFUSED = [], []
for _combo in itertools.product(*ADV_AXES.values()):
    try:
        _adv_config(*_combo)
    except ConfigError:
        ADV_REFUSED.append(_combo)
    else:
        ADV_ACCEPTED.append(_combo)


def test_the_adversarial_matrix_refuses_exactly_what_cannot_work():
    """Every model takes every likelihood and backbone; --encoder is an option of aae and alphagan
    only, --prior of aae only, and never the VampPrior (built from the encoder it regularizes)."""
    for model, likelihood, net, encoder, prior in ADV_REFUSED:
        assert (
            (encoder != "deterministic" and model not in ("aae", "alphagan"))
            or (prior != "standard" and model != "aae")
            or prior.startswith("vamp")
        ), (model, likelihood, net, encoder, prior)
    for i, values in enumerate(ADV_AXES.values()):
        assert {c[i] for c in ADV_ACCEPTED} == set(values) - {"vamp:3"}
    assert len(ADV_ACCEPTED) == 9 * (1 + 1 + 4 + 2 + 1)


@pytest.mark.parametrize("combo", ADV_ACCEPTED, ids=["-".join(c) for c in ADV_ACCEPTED])
def test_every_adversarial_combination_trains_every_player_and_keeps_its_device(combo):
    """On a tiny float64 model: every player's loss is finite per example and has a finite, non-zero
    gradient for its own parameters; the generator's output is a sigmoid for ``bernoulli`` (in
    (0, 1)) and the unbounded mean otherwise; forward and backward on the meta device."""
    config = _adv_config(*combo)
    event = EVENT if combo[2] == "mlp" else IMAGE
    torch.manual_seed(0)
    model = model_from_config(config, event).double()
    x = torch.rand(BATCH, *event, dtype=torch.float64)
    out = model.losses(x)
    for player in model.players():
        loss = out[player.name]
        assert loss.shape == (BATCH,) and torch.isfinite(loss).all(), player.name
        grads = torch.autograd.grad(loss.mean(), player.parameters, retain_graph=True, allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), player.name
        assert any(g is not None and g.abs().sum() > 0 for g in grads), player.name
    with torch.no_grad():
        images = model.generate(10 * torch.randn(50, LATENT, dtype=torch.float64))
    if combo[1] == "bernoulli":
        assert 0 < images.min() and images.max() < 1
    else:
        assert images.min() < 0 or images.max() > 1
    meta = model_from_config(config, event).to("meta")
    out = meta.losses(torch.empty(BATCH, *event, device="meta"))
    sum(v.mean() for k, v in out.items() if k in {p.name for p in meta.players()}).backward()
    assert all(v.device.type == "meta" for v in out.values())
    assert all(p.grad is None or p.grad.device.type == "meta" for p in meta.parameters())


@pytest.mark.parametrize("combo", ADV_ACCEPTED, ids=["-".join(c) for c in ADV_ACCEPTED])
def test_every_adversarial_combination_gives_the_same_losses_and_gradients_when_its_batch_is_split(combo):
    """What torchrun's processes compute, in one process: the batch split 3 + 1 (each part under
    ``sharding.sharded``, from the same generator state) gives each example every loss one
    process gives it (the prior draws and the encoder's noise follow the examples), and each
    player's gradients of its parts' loss sums add up to the whole batch's."""
    config = _adv_config(*combo)
    event = EVENT if combo[2] == "mlp" else IMAGE
    torch.manual_seed(0)
    model = model_from_config(config, event).double()
    x = torch.rand(4, *event, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    players = list(model.players())

    def run(rows, shard):
        torch.manual_seed(3)
        with sharding.sharded(shard):
            out = model.losses(x[rows])
        grads = {p.name: torch.autograd.grad(out[p.name].sum(), p.parameters, retain_graph=True, allow_unused=True)
                 for p in players}  # fmt: skip
        return out, grads

    whole, whole_grads = run(slice(0, 4), None)
    parts = [run(slice(0, 3), sharding.Shard(0, 3, 4, reduce=False)), run(slice(3, 4), sharding.Shard(3, 1, 4, reduce=False))]
    for name, value in whole.items():
        torch.testing.assert_close(torch.cat([out[name] for out, _ in parts]), value, rtol=1e-9, atol=1e-9, msg=name)
    for player in players:
        for g, a, b in zip(whole_grads[player.name], parts[0][1][player.name], parts[1][1][player.name]):
            if g is not None:
                torch.testing.assert_close(a + b, g, rtol=1e-8, atol=1e-10, msg=player.name)


@pytest.mark.parametrize("net, depth", [("mlp", 2), ("conv", 3), ("resnet", 4)])
def test_every_vaegan_feature_layer_of_every_backbone(net, depth):
    """--feature-layer takes 0 (the last hidden layer) to the discriminator's depth (mlp: one per
    --hidden width; conv: 3; resnet: 4) and refuses the next one in one ConfigError."""
    event = EVENT if net == "mlp" else IMAGE
    x = torch.rand(BATCH, *event)
    for layer in range(depth + 1):
        model = model_from_config(_adv_config("vaegan", "bernoulli", net, "deterministic", "standard", layer), event)
        assert model.critic.depth == depth
        assert torch.isfinite(model.losses(x)["encoder"]).all()
    with pytest.raises(ConfigError, match=f"1 to {depth}"):
        _adv_config("vaegan", "bernoulli", net, "deterministic", "standard", depth + 1)
