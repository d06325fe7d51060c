"""Running the training step closer to the machine: ``torch.compile`` of the objective, with a
graceful eager fallback.

The trainer's per-step loss (the objective of a batch) is a chain of small kernels: dense
layers, tanh, the Bernoulli log-likelihood's softplus, the Gaussian KL. Eagerly, each is its own
dispatch and its own pass over memory; compiled (TorchInductor), the elementwise chains are fused
into a few loops and the per-operation overhead of the autograd graph shrinks, while the matrix
products still go to the BLAS. Compiling costs tens of seconds on a cold cache (a few with a warm
one), so ``compile="auto"`` asks for it only where it wins that back (epochs of many steps, each
with many particles per example: importance-weighted objectives), and only where it can work at
all (a C++ compiler for the CPU, a CPU or CUDA device).

Compilation never changes what is trained: random draws go through PyTorch's own generators
(Inductor's ``fallback_random``), so the random stream is the eager one, and a run killed and
resumed with the same settings still ends bitwise identical to an uninterrupted one. Results
differ from eager ones only by the rounding of fused arithmetic.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError

COMPILE_MODES = ("auto", "on", "off")
FUSED_MODES = ("auto", "off")
# compile="auto" compiles when an epoch has at least this many steps: Fashion-MNIST at batch 100
# (600 steps) does, small data sets (whose epochs take well under a second) never wait for a compiler
AUTO_MIN_STEPS = 500
# ... and the objective draws at least this many particles per example: a compiled IWAE(k=50) step
# of the Burda MLP on Fashion-MNIST ran 1.6-1.7x faster than the eager one, a single-particle ELBO
# step 0-10% (under a millisecond), which takes dozens of epochs to win back 20-30 s of compiling
# (benchmarks/bench_speed_changes.py)
AUTO_MIN_PARTICLES = 8
_DEVICES = ("cpu", "cuda")
_log = logging.getLogger("vaelab")  # the CLI shows its warnings as one line on stderr


def check_compile(compile: str) -> str:
    """``compile`` if it is one of ``COMPILE_MODES``, else a one-line ConfigError."""
    if compile not in COMPILE_MODES:
        raise ConfigError(f"compile={compile!r} is not a compile mode; choose one of: {', '.join(COMPILE_MODES)}")
    return compile


def check_fused(fused: str) -> str:
    """``fused`` if it is one of ``FUSED_MODES``, else a one-line ConfigError."""
    if fused not in FUSED_MODES:
        raise ConfigError(f"fused={fused!r} is not a fused-step mode; choose one of: {', '.join(FUSED_MODES)}")
    return fused


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use for CPU code (``$CXX``, else g++, c++ or clang++), or None."""
    candidates = [os.environ.get("CXX")] if os.environ.get("CXX") else []
    for name in (*candidates, "g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def particles_per_example(objective: Callable[..., Any]) -> int:
    """K x M of an objective from ``objectives.get_objective`` (its bound ``k=`` and ``m=``); 1 for
    any other callable."""
    options = objective.keywords if isinstance(objective, functools.partial) else {}
    k, m = options.get("k", 1), options.get("m", 1)
    return k * m if isinstance(k, int) and isinstance(m, int) else 1


def compile_refusal(
    model: nn.Module, *, steps_per_epoch: int, scheduled: bool, auto: bool, particles: int = AUTO_MIN_PARTICLES
) -> str | None:
    """Why the objective should run eagerly for this model, or None to compile it.

    Args:
        model: the model being trained; its parameters' device decides what compiling needs.
        steps_per_epoch: training steps per epoch (``auto`` compiles from ``AUTO_MIN_STEPS`` on).
        scheduled: whether the objective's options change from step to step (a KL schedule), which
            would compile the step again for new values.
        auto: ``compile="auto"`` (the step count and the particles matter) rather than ``"on"``.
        particles: particles per example the objective draws (``auto`` compiles from
            ``AUTO_MIN_PARTICLES`` on).
    """
    devices = {p.device.type for p in model.parameters()} or {"cpu"}
    if not devices <= set(_DEVICES):
        return f"torch.compile is not used on {'/'.join(sorted(devices))} (only on {' and '.join(_DEVICES)})"
    if "cpu" in devices and cpp_compiler() is None:
        return "no C++ compiler was found (set CXX, or install g++), which torch.compile needs on the CPU"
    if scheduled:
        return "the objective's options change every step (a KL schedule), which would compile it again and again"
    if auto and steps_per_epoch < AUTO_MIN_STEPS:
        return f"an epoch of {steps_per_epoch} steps is too short to win back the compile time"
    if auto and particles < AUTO_MIN_PARTICLES:
        return f"a step with {particles} particle(s) per example gains too little to win back the compile time"
    return None


class StepObjective:
    """The objective as the training step calls it: compiled where that works, eager otherwise.

    The compiled function serves the batches of the first batch's shape, called without options;
    any other call (a smaller last batch, options from a schedule) runs eagerly, so one graph is
    compiled per run. The first compiled call compiles; if that fails for any reason, the random
    state is put back, the objective runs eagerly, and training stays eager from then on (with
    ``compile="on"``, one warning on the "vaelab" logger says so). An error of the objective itself (a bad option) is
    raised by the eager call as usual.

    Args:
        objective: ``f(model, x, **options)`` returning per-example tensors.
        compile: one of ``COMPILE_MODES``.
        model: the model to be trained (its device decides whether compiling can work).
        steps_per_epoch: training steps per epoch.
        scheduled: whether a schedule passes options to the objective.
    """

    def __init__(
        self, objective: Callable[..., NamedTuple], compile: str, model: nn.Module, *, steps_per_epoch: int,
        scheduled: bool,
    ) -> None:  # fmt: skip
        self.objective = objective
        self.mode = check_compile(compile)
        self.reason: str | None = "compile='off'"  # why the step runs eagerly (None: it is compiled)
        self._compiled: Callable[..., NamedTuple] | None = None
        self._shape: torch.Size | None = None
        if self.mode == "off":
            return
        self.reason = compile_refusal(model, steps_per_epoch=steps_per_epoch, scheduled=scheduled, auto=self.mode == "auto",
                                      particles=particles_per_example(objective))  # fmt: skip
        if self.reason is not None:
            self._warn()
            return
        self._compiled = torch.compile(objective, dynamic=False, options={"fallback_random": True})

    @property
    def compiled(self) -> bool:
        """Whether training steps run compiled (so far: a failed first compile turns it off)."""
        return self._compiled is not None

    def __call__(self, model: nn.Module, x: Tensor, **options: Any) -> NamedTuple:
        if self._compiled is None or options or (self._shape is not None and x.shape != self._shape):
            return self.objective(model, x, **options)
        if self._shape is not None:
            return self._compiled(model, x)
        states = _rng_states(x)
        try:
            out = self._compiled(model, x)
        except Exception as err:  # any failure of the compiler stack: train eagerly instead
            _set_rng_states(states)
            out = self.objective(model, x)  # the objective's own errors surface here
            self._compiled = None
            self.reason = f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            self._warn()
            return out
        self._shape = x.shape
        return out

    def _warn(self) -> None:
        if self.mode == "on":
            _log.warning("training runs eagerly, not compiled, because %s", self.reason)


def _rng_states(x: Tensor) -> tuple[Tensor, tuple[torch.device, Tensor] | None]:
    cuda = (x.device, torch.cuda.get_rng_state(x.device)) if x.device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Tensor, tuple[torch.device, Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda[1], cuda[0])


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``, for a fused ``torch.optim.Adam`` by the same two kernels its step
    runs (the step counters' increment and ``torch._fused_adam_``) without the per-call Python
    work around them: grouping, hooks, profiling records (0.1-0.2 ms of a few-millisecond
    training step at batch 100). The update is bitwise the same. Any other optimizer, one with
    hooks or several groups, a first step (which creates the state), or a PyTorch without the
    kernel, goes through ``optimizer.step()``."""
    lists = _fused_adam_lists(optimizer)
    if lists is None:
        optimizer.step()
        return
    params, grads, avgs, squares, steps, group = lists
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(
        params, grads, avgs, squares, [], steps, amsgrad=False, lr=group["lr"], beta1=group["betas"][0],
        beta2=group["betas"][1], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None,
        found_inf=None,
    )  # fmt: skip


def _fused_adam_lists(optimizer: torch.optim.Optimizer) -> tuple | None:
    """The tensor lists and the group for ``adam_step``'s direct call, or None where it does not apply."""
    from torch.optim import optimizer as optim_module

    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1 or not hasattr(torch, "_fused_adam_"):
        return None
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return None
    if getattr(optim_module, "_global_optimizer_pre_hooks", None) or getattr(optim_module, "_global_optimizer_post_hooks", None):
        return None
    group = optimizer.param_groups[0]
    if not group.get("fused") or group.get("amsgrad") or group.get("maximize") or group.get("capturable") \
            or group.get("differentiable") or group.get("decoupled_weight_decay") or isinstance(group["lr"], Tensor) \
            or any(isinstance(b, Tensor) for b in group["betas"]):  # fmt: skip
        return None
    params, grads, avgs, squares, steps = [], [], [], [], []
    state = optimizer.state
    first = group["params"][0] if group["params"] else None
    for p in group["params"]:
        if p.grad is None:
            return None
        slots = state.get(p)
        if not slots or "exp_avg" not in slots or p.device != first.device or p.dtype != first.dtype or p.grad.is_sparse:
            return None
        params.append(p)
        grads.append(p.grad)
        avgs.append(slots["exp_avg"])
        squares.append(slots["exp_avg_sq"])
        steps.append(slots["step"])
    return (params, grads, avgs, squares, steps, group) if params else None
