"""A hand-derived training step for the commonest VAE: the analytic-KL ELBO of an MLP VAE.

The training step of the model of Kingma & Welling and Burda et al. (dense layers with tanh or
ReLU between them, a diagonal Gaussian q(z|x), an N(0, I) prior, a Bernoulli or fixed-precision
Gaussian p(x|z), one particle per example) is a chain of a dozen matrix products and a few
elementwise maps. Through autograd, each map allocates its output, records a node and, in the
backward pass, runs one or two more kernels; at a batch of 100 that bookkeeping costs as much as
the matrix products themselves. ``FusedELBO`` computes the same values and the same gradients
with the chain rule written out: every intermediate lives in a buffer kept from step to step,
tanh runs as 2 sigmoid(2x) - 1 with the factor 2 folded into the dense layer, the Bernoulli
log-likelihood needs one softplus and one sigmoid of the logits, and each gradient is written
straight into the parameter's ``.grad`` by a matrix product. The Adam step that follows is the
trainer's usual one, so checkpoints, resumption and the optimizer state do not change.

What it computes is the ``elbo`` objective's (``objectives.elbo``): per example
``objective = log p(x|z) - beta kl_scale KL(q || p)``, ``bound = log p(x|z) - KL``, with z = mu +
sigma eps drawn from the same random stream as the autograd path, so the two paths train the same
model up to float rounding (``tests/test_fused.py`` compares their gradients and their weights
after many steps). ``refusal`` says why a model or objective takes the autograd path instead.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..distributions.observation import BernoulliObservation, GaussianObservation
from ..distributions.posteriors import DiagonalGaussianPosterior
from ..distributions.priors import StandardNormalPrior
from ..nets.backbones import Tanh, Unflatten
from .vae import VAE

_TANH = (Tanh, nn.Tanh)


class _Layer(NamedTuple):
    linear: nn.Linear
    activation: str | None  # "tanh", "relu" or None (the last layer of a network)


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules a chain of (nested) ``nn.Sequential`` runs, in order; [module] for any other."""
    if type(module) is nn.Sequential:
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _dense_chain(leaves: list[nn.Module]) -> list[_Layer] | str:
    """Linear, activation, Linear, ..., Linear as layers, or why the modules are not such a chain."""
    layers: list[_Layer] = []
    i = 0
    while i < len(leaves):
        linear = leaves[i]
        if type(linear) is not nn.Linear or linear.bias is None:
            return f"{type(linear).__name__} is not a dense layer with a bias"
        act = leaves[i + 1] if i + 1 < len(leaves) else None
        if act is None:
            layers.append(_Layer(linear, None))
            break
        if type(act) in _TANH:
            layers.append(_Layer(linear, "tanh"))
        elif type(act) is nn.ReLU:
            layers.append(_Layer(linear, "relu"))
        else:
            return f"the activation {type(act).__name__} is not tanh or relu"
        i += 2
    if not layers or layers[-1].activation is not None:
        return "the network does not end in a dense layer"
    for before, after in zip(layers[:-1], layers[1:]):
        if before.linear.out_features != after.linear.in_features:
            return "the dense layers' sizes do not chain"
    return layers


def _objective_options(objective: Callable[..., Any]) -> dict[str, Any] | None:
    """The options of ``objectives.elbo`` bound in ``objective``, or None for any other objective."""
    from ..inference.objectives import elbo

    if objective is elbo:
        return {}
    if isinstance(objective, functools.partial) and objective.func is elbo and not objective.args:
        return dict(objective.keywords)
    return None


def _options_refusal(options: dict[str, Any]) -> str | None:
    """Why the ELBO with these options is not the fused step's, or None."""
    from ..inference.objectives import objective_options

    unknown = sorted(set(options) - objective_options("elbo"))
    if unknown:
        return f"the ELBO option(s) {', '.join(unknown)} are not the fused step's"
    if options.get("k", 1) != 1:
        return "the ELBO draws more than one particle per example"
    if options.get("kl", "analytic") != "analytic":
        return "the KL is estimated by Monte Carlo"
    if options.get("grad_estimator", "reparam") != "reparam":
        return f"the gradient estimator is {options['grad_estimator']!r}, not the reparameterization gradient"
    if options.get("free_bits", 0.0) != 0.0:
        return "free bits are on"
    for name in ("beta", "kl_scale"):
        value = options.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
            return f"{name}={value!r} is left to the objective to check"
    return None


def refusal(model: nn.Module, objective: Callable[..., Any] | None) -> str | None:
    """Why ``FusedELBO`` cannot train ``model`` on ``objective`` (the autograd path does), or None.

    It trains exactly: a ``VAE`` whose encoder is Flatten and a chain of dense layers with tanh or
    ReLU between them, whose decoder is such a chain and a reshape to the data, with the diagonal
    Gaussian posterior, the standard normal prior and a Bernoulli or fixed-precision Gaussian
    likelihood, every parameter trained, on the ``elbo`` objective with one particle, the analytic
    KL, the reparameterization gradient, any beta and kl_scale, and no free bits.
    """
    if objective is None:
        return "the model has no objective"
    options = _objective_options(objective)
    if options is None:
        return "the objective is not the ELBO"
    why = _options_refusal(options)
    if why is not None:
        return why
    return model_refusal(model)


def _reshape(module: nn.Module) -> tuple[int, ...] | None:
    """The shape a decoder's last module gives each row, (params per dimension, *event shape), when
    it is a reshape of the rows (vaelab's own, or ``nn.Unflatten`` of dimension 1); else None."""
    if type(module) is Unflatten:
        return tuple(module.shape)
    if type(module) is nn.Unflatten and module.dim == 1:
        return tuple(module.unflattened_size)
    return None


def _networks(model: VAE) -> tuple[list[_Layer], list[_Layer]] | str:
    """The dense layers of the encoder (after its Flatten) and of the decoder (before its reshape to
    the data), or why the networks are not such chains of matching sizes."""
    if model.encoder is None:
        return "the model has no encoder"
    enc = _leaves(model.encoder)
    if not enc or type(enc[0]) is not nn.Flatten or (enc[0].start_dim, enc[0].end_dim) != (1, -1):
        return "the encoder does not start by flattening the data"
    dec = _leaves(model.decoder)
    shape = _reshape(dec[-1]) if dec else None
    if shape is None:
        return "the decoder does not end by reshaping to the data"
    enc_layers, dec_layers = _dense_chain(enc[1:]), _dense_chain(dec[:-1])
    if isinstance(enc_layers, str) or isinstance(dec_layers, str):
        return enc_layers if isinstance(enc_layers, str) else dec_layers  # type: ignore[return-value]
    d = model.latent_dim
    if enc_layers[-1].linear.out_features != 2 * d or dec_layers[0].linear.in_features != d:
        return "the networks' sizes do not match the latent dimension"
    if shape[0] != 1:
        return "the decoder gives more than one parameter per data dimension"
    if math.prod(shape) != dec_layers[-1].linear.out_features:
        return "the decoder's reshape does not match its last layer"
    if dec_layers[-1].linear.out_features != enc_layers[0].linear.in_features:
        return "the encoder's input and the decoder's output differ in size"
    return enc_layers, dec_layers


def _forward(layers: list[_Layer], h: Tensor, outs: list[Tensor]) -> list[Tensor]:
    """Runs a dense chain on ``h`` into the buffers ``outs`` (one per layer, the last layer without
    activation); returns the input and every layer's output. tanh(a) = 2 sigmoid(2a) - 1, the 2a
    from the product itself."""
    values = [h]
    for (linear, act), out in zip(layers, outs, strict=True):
        if act == "tanh":
            torch.addmm(linear.bias, h, linear.weight.t(), beta=2, alpha=2, out=out)
            torch.sigmoid(out, out=out)
            out.mul_(2).sub_(1)
        else:
            torch.addmm(linear.bias, h, linear.weight.t(), out=out)
            if act == "relu":
                out.clamp_min_(0)
        values.append(out)
        h = out
    return values


def _gaussian_log_density(squares: Tensor, n: int, precision: Tensor) -> Tensor:
    """sum over n data dimensions of log N(x; m, 1/p) = -p (x - m)^2 / 2 - log(2 pi / p) / 2, from
    ``squares`` = sum (x - m)^2 (overwritten) and the precision p."""
    return squares.mul_(-0.5 * precision).sub_(n * (0.5 * math.log(2 * math.pi) - 0.5 * precision.log()))


def _precision(model: VAE, dtype: torch.dtype) -> Tensor:
    """The fixed precision 1/s^2 of a Gaussian likelihood, on the model's device."""
    return model.observation.scale.to(dtype).square().reciprocal()


def model_refusal(model: nn.Module) -> str | None:
    """Why ``model`` is not one of the MLP VAEs the fused step and ``FusedLogWeights`` compute, or None."""
    if type(model) is not VAE:
        return f"the model is a {type(model).__name__}, not a plain VAE"
    if type(model.posterior) is not DiagonalGaussianPosterior:
        return "the posterior is not the diagonal Gaussian"
    if type(model.latent_prior) is not StandardNormalPrior:
        return "the prior is not the standard normal"
    if type(model.observation) not in (BernoulliObservation, GaussianObservation):
        return "the likelihood is not Bernoulli or fixed-precision Gaussian"
    nets = _networks(model)
    if isinstance(nets, str):
        return nets
    enc_layers, dec_layers = nets
    covered = {id(p) for layer in (*enc_layers, *dec_layers) for p in (layer.linear.weight, layer.linear.bias)}
    params = list(model.parameters())
    if {id(p) for p in params} != covered or len(covered) != len(params):
        return "the model has parameters outside its dense layers"
    if not all(p.requires_grad for p in params):
        return "some parameters are frozen"
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        return "the parameters are not all of one floating-point dtype"
    return None


class FusedELBO:
    """The ELBO's per-example values and the gradient of minus their mean, by hand (see the module
    docstring): ``step(x, options)`` writes the gradients into the parameters' ``.grad`` and
    returns the ``objectives.Bound`` of the batch (detached). Build it with ``build``, which
    returns None (and ``refusal`` says why) where the model or the objective is not one it does.

    Args:
        model: a model ``refusal`` accepts.
        options: the ELBO options bound in the trainer's objective.
    """

    def __init__(self, model: VAE, options: dict[str, Any]) -> None:
        self.model = model
        self.encoder, self.decoder = _networks(model)  # type: ignore[misc]
        self.latent_dim = model.latent_dim
        self.options = options
        self.bernoulli = type(model.observation) is BernoulliObservation
        self._buffers: dict[tuple, dict[str, Any]] = {}

    @classmethod
    def build(cls, model: nn.Module, objective: Callable[..., Any] | None) -> FusedELBO | None:
        if refusal(model, objective) is not None:
            return None
        return cls(model, _objective_options(objective))  # type: ignore[arg-type]

    def accepts(self, options: dict[str, Any]) -> bool:
        """Whether a step with these per-step options (a schedule's) is one the fused step does."""
        return not options or _options_refusal({**self.options, **options}) is None

    # -- buffers -----------------------------------------------------------------------------

    def _workspace(self, x: Tensor) -> dict[str, Any]:
        """Buffers for a batch like ``x``, made once per batch size, device and dtype: per network
        ("e", "d") each layer's output, the gradient of its input (".grad") and, where it has an
        activation, the gradient before it (".pre")."""
        weight = self.encoder[0].linear.weight
        key = (x.shape[0], weight.device, weight.dtype)
        ws = self._buffers.get(key)
        if ws is None:
            b = x.shape[0]

            def new(*shape: int) -> Tensor:
                return torch.empty(b, *shape, device=weight.device, dtype=weight.dtype)

            ws = {}
            for side, layers in (("e", self.encoder), ("d", self.decoder)):
                ws[side] = [new(layer.linear.out_features) for layer in layers]
                ws[f"{side}.grad"] = [new(layer.linear.in_features) for layer in layers]
                ws[f"{side}.pre"] = [new(layer.linear.out_features) if layer.activation else None for layer in layers]
            d = self.latent_dim
            for name in ("eps", "std", "noise", "z"):
                ws[name] = new(d)
            ws["dq"] = new(2 * d)
            ws["work"] = new(self.decoder[-1].linear.out_features)
            if len(self._buffers) >= 4:  # batch sizes come and go (a last, smaller batch): keep a few
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[key] = ws
        return ws

    def _grads(self, linear: nn.Linear) -> tuple[Tensor, Tensor]:
        """The layer's .grad tensors, made (zeros) where an earlier zero_grad(set_to_none) dropped them."""
        for p in (linear.weight, linear.bias):
            if p.grad is None or p.grad.shape != p.shape:
                p.grad = torch.zeros_like(p)
        return linear.weight.grad, linear.bias.grad

    # -- the step ----------------------------------------------------------------------------

    def _backward(self, layers: list[_Layer], outs: list[Tensor], grad: Tensor, ws: dict[str, Any], side: str,
                  input_grad: bool) -> Tensor | None:  # fmt: skip
        """Given the gradient of the loss at the last layer's output, writes every layer's parameter
        gradients and returns the gradient at the chain's input (None when not ``input_grad``)."""
        below_bufs, pre_bufs = ws[f"{side}.grad"], ws[f"{side}.pre"]
        for i in range(len(layers) - 1, -1, -1):
            linear, _ = layers[i]
            inp = outs[i]
            gw, gb = self._grads(linear)
            torch.mm(grad.t(), inp, out=gw)
            torch.sum(grad, 0, out=gb)
            if i == 0 and not input_grad:
                return None
            below = below_bufs[i]
            torch.mm(grad, linear.weight, out=below)
            if i == 0:
                return below
            pre = pre_bufs[i - 1]
            if layers[i - 1].activation == "tanh":
                torch.ops.aten.tanh_backward.grad_input(below, inp, grad_input=pre)
            else:
                torch.ops.aten.threshold_backward.grad_input(below, inp, 0, grad_input=pre)
            grad = pre
        return None

    @torch.no_grad()
    def step(self, x: Tensor, options: dict[str, Any] | None = None):
        """Values and gradients of the batch ``x`` (B, *event_shape); see the class docstring."""
        from ..inference.objectives import Bound

        opts = {**self.options, **(options or {})}
        weight = float(opts.get("beta", 1.0)) * float(opts.get("kl_scale", 1.0))
        b, d = x.shape[0], self.latent_dim
        ws = self._workspace(x)
        flat = x.reshape(b, -1).to(ws["z"].dtype)

        # encoder, q(z|x) = N(mu, exp(log_var)), z = mu + sigma eps
        enc = _forward(self.encoder, flat, ws["e"])
        params = enc[-1]
        mu, log_var = params[:, :d], params[:, d:]
        std = torch.mul(log_var, 0.5, out=ws["std"]).exp_()
        eps = ws["eps"].normal_()  # the draws PosteriorNormal.rsample makes on the autograd path
        noise = torch.mul(std, eps, out=ws["noise"])
        z = torch.add(mu, noise, out=ws["z"])

        # decoder and log p(x|z)
        dec = _forward(self.decoder, z, ws["d"])
        out = dec[-1]
        work = ws["work"]
        if self.bernoulli:  # sum x l - softplus(l); d/dl = x - sigmoid(l)
            reconstruction = torch.linalg.vecdot(flat, out) - torch.nn.functional.softplus(out).sum(1)
            torch.sigmoid(out, out=work)
            work.sub_(flat).mul_(1.0 / b)  # d loss / d l, loss = -mean(objective)
        else:  # sum -(x - m)^2 / (2 s^2) - log s - log(2 pi) / 2; d/dm = (x - m) / s^2
            precision = _precision(self.model, work.dtype)
            torch.sub(out, flat, out=work)
            reconstruction = _gaussian_log_density(torch.linalg.vecdot(work, work), work.shape[1], precision)
            work.mul_(precision / b)
        # KL(N(mu, s^2) || N(0, I)) = 1/2 sum (mu^2 + s^2 - 1 - log s^2)
        kl = 0.5 * (mu.square() + std.square() - 1 - log_var).sum(1)

        # backward: decoder, then the reparameterization and the KL, then the encoder
        grad_z = self._backward(self.decoder, dec, work, ws, "d", input_grad=True)
        dq = ws["dq"]
        dmu, dlog_var = dq[:, :d], dq[:, d:]
        torch.add(grad_z, mu, alpha=weight / b, out=dmu)  # z and the KL's mu^2 / 2
        torch.mul(grad_z, noise, out=dlog_var)  # z's s eps / 2 ...
        dlog_var.add_(std.square().sub_(1), alpha=weight / b).mul_(0.5)  # ... and the KL's (s^2 - 1) / 2
        self._backward(self.encoder, enc, dq, ws, "e", input_grad=False)
        return Bound(objective=reconstruction - weight * kl, bound=reconstruction - kl, reconstruction=reconstruction, kl=kl)


_GROUP = 112  # factors of a product of sigmoid(|l|) >= 1/2: 2^-112 stays a normal float32


def log_cosh_sum_(logits: Tensor) -> Tensor:
    """sum over the last dimension of log(2 cosh(l / 2)) = softplus(l) - l / 2 for logits (R, D),
    overwriting ``logits``.

    log(2 cosh(l / 2)) = |l| / 2 + log(1 + e^-|l|) = |l| / 2 - log sigmoid(|l|), and a sum of logs
    is the log of a product: the logarithm, the costliest kernel of ``F.softplus`` (about 1 ns an
    element here), runs on one number per group of 112 instead of on every element. Each factor
    sigmoid(|l|) lies in [1/2, 1], so a group's product stays above 2^-112, a normal float32 (no
    underflow, nothing flushed). The evaluator needs no more: the sum x . l - sum l / 2 of the
    Bernoulli log-likelihood is one product with the hidden layer (``FusedLogWeights``). With
    sum l / 2 added it is the sum of softplus(l), to the rounding of a float32 sum over D terms
    (measured against float64 at logit scales 1 to 30: the same size of error as ``F.softplus``'s
    own sum), at about 55-65% of the time of ``F.softplus(l).sum(-1)`` on (1000, 784) logits.
    """
    logits.abs_()
    total = logits.sum(-1).mul_(0.5)
    torch.sigmoid(logits, out=logits)
    d = logits.shape[-1]
    main = d - d % _GROUP
    if main:
        total.sub_(logits[..., :main].unflatten(-1, (main // _GROUP, _GROUP)).prod(-1).log_().sum(-1))
    if main != d:
        total.sub_(logits[..., main:].prod(-1).log_())
    return total


class _Dense(NamedTuple):
    weight_t: Tensor  # (in, out): the layer's weight, transposed, with the activations' affine maps folded in
    bias: Tensor
    sigmoid: bool  # the output is sigmoid(pre-activation): a tanh layer's (tanh = 2 sigmoid(2a) - 1)
    relu: bool


def _folded_decoder(layers: list[_Layer]) -> list[_Dense]:
    """The decoder's layers with tanh's affine maps folded into the products: a tanh layer keeps
    s = sigmoid(2a) (the 2 in its weight and bias), and the layer after it, which needs
    W tanh(a) + b = (2 W) s + (b - W 1), takes 2 W and b - W 1; the last layer's output is the
    decoder's (logits or means), the same numbers up to rounding."""
    dense: list[_Dense] = []
    after_tanh = False
    for linear, act in layers:
        w, bias = linear.weight.detach(), linear.bias.detach()
        if after_tanh:
            w, bias = 2 * w, bias - w.sum(1)
        if act == "tanh":
            w, bias = 2 * w, 2 * bias
        dense.append(_Dense(w.t().contiguous(), bias.contiguous(), act == "tanh", act == "relu"))
        after_tanh = act == "tanh"
    return dense


class FusedLogWeights:
    """The log-weights of importance sampling, log p(x, z_k) - log q(z_k|x) with z_k ~ q(z|x), and
    log p(x|z_k), for the models ``model_refusal`` accepts, without building distributions: the
    evaluator's hot loop (``evaluate.log_likelihood``). The particles are drawn exactly as
    ``q.rsample((k,))`` draws them (the same numbers, the same z); the decoder runs into buffers
    kept from chunk to chunk, with tanh as 2 sigmoid(2x) - 1 and its affine maps folded into the
    next layer's weights (``_folded_decoder``, made again whenever the weights change). For
    Bernoulli pixels, log p(x|z) = x . l - sum softplus(l) = (x - 1/2) . l - sum log(2 cosh(l / 2)),
    and (x - 1/2) . l, with l = h W^T + c, is h . (W^T (x - 1/2)) + c . (x - 1/2): a product with the
    last hidden layer (200 numbers a row for Burda's model) instead of a pass over the logits (784),
    with W^T (x - 1/2) made once per example (``fold``), not once per chunk of particles; the rest
    is ``log_cosh_sum_``. Values equal the distributions' up to float rounding.
    """

    def __init__(self, model: VAE) -> None:
        self.model = model
        _, self.decoder = _networks(model)  # type: ignore[misc]
        self.bernoulli = type(model.observation) is BernoulliObservation
        self._buffers: tuple[tuple, list[Tensor]] | None = None  # (rows, device, dtype) and each layer's output
        self._dense: tuple[tuple, list[_Dense]] | None = None  # the weights' versions and the folded layers

    @classmethod
    def build(cls, model: nn.Module) -> FusedLogWeights | None:
        return None if model_refusal(model) is not None else cls(model)  # type: ignore[arg-type]

    def _workspace(self, rows: int, like: Tensor) -> list[Tensor]:
        """Each decoder layer's output for ``rows`` rows, kept while chunks keep that size."""
        key = (rows, like.device, like.dtype)
        if self._buffers is None or self._buffers[0] != key:
            layers = [torch.empty(rows, layer.linear.out_features, device=like.device, dtype=like.dtype)
                      for layer in self.decoder]  # fmt: skip
            self._buffers = (key, layers)
        return self._buffers[1]

    def _layers(self) -> list[_Dense]:
        """The folded decoder for the weights as they are now (made again after any change to them)."""
        params = [p for layer in self.decoder for p in (layer.linear.weight, layer.linear.bias)]
        try:
            key: tuple | None = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        except RuntimeError:  # inference tensors keep no version counter: fold for every call
            key = None
        if self._dense is None or key is None or self._dense[0] != key:
            with torch.no_grad():
                self._dense = (key, _folded_decoder(self.decoder))
        return self._dense[1]

    @torch.no_grad()
    def fold(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """For Bernoulli pixels, W^T (x - 1/2) (b, H) and c . (x - 1/2) (b,) of the examples ``x``
        (b, *event_shape) with the last layer's (folded) W and c; None for a Gaussian likelihood.
        Made once per pass of ``evaluate.log_likelihood`` and given to every chunk of it."""
        if not self.bernoulli:
            return None
        last = self._layers()[-1]
        centred = x.reshape(x.shape[0], -1).to(last.bias.dtype) - 0.5
        return centred @ last.weight_t.t(), centred @ last.bias

    @torch.no_grad()
    def __call__(self, x: Tensor, q: Any, k: int, log_w: Tensor, log_px: Tensor,
                 folded: tuple[Tensor, Tensor] | None = None) -> None:  # fmt: skip
        """Draws k particles per example of ``x`` (b, *event_shape) from ``q`` (the model's
        ``encode(x)``) and writes the log-weights and log p(x|z) into ``log_w`` and ``log_px`` (k, b);
        ``folded`` is ``fold(x)``, made here when not given."""
        from ..core.sharding import standard_normal

        normal = q.base_dist
        loc, scale = normal.loc, normal.scale  # (b, D)
        b, d = loc.shape
        eps = standard_normal((k, b, d), 1, loc)  # as PosteriorNormal.rsample((k,)) draws them
        z = loc + eps * scale  # (k, b, D)
        # log p(z) - log q(z|x) = sum -z^2/2 + eps^2/2 + log s (the 2 pi terms cancel)
        torch.sub(eps.square().sum(-1), z.square().sum(-1), out=log_w)
        log_w.mul_(0.5).add_(scale.log().sum(-1))
        h = z.view(k * b, d)
        outs = self._workspace(k * b, loc)
        hidden = h
        for layer, out in zip(self._layers(), outs, strict=True):
            torch.addmm(layer.bias, h, layer.weight_t, out=out)
            if layer.sigmoid:
                torch.sigmoid(out, out=out)
            elif layer.relu:
                out.clamp_min_(0)
            hidden, h = h, out
        if self.bernoulli:
            fv, fc = self.fold(x) if folded is None else folded
            # (x - 1/2) . l per particle: the last hidden layer (k, b, H) against W^T (x - 1/2) (b, H)
            xl = torch.bmm(hidden.view(k, b, -1).transpose(0, 1), fv.unsqueeze(-1)).squeeze(-1).T  # (k, b)
            torch.sub(xl.add_(fc), log_cosh_sum_(h).view(k, b), out=log_px)
        else:
            h.view(k, b, -1).sub_(x.reshape(b, -1).to(loc.dtype))
            squares = torch.linalg.vecdot(h, h).view(k, b)
            log_px.copy_(_gaussian_log_density(squares, h.shape[1], _precision(self.model, loc.dtype)))
        log_w.add_(log_px)
