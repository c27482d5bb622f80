"""The contract every layer op fulfils, built-in or third-party.

An op declares, side by side: its parameter model, shape inference, parameter initialisation,
forward, backward and FLOPs. Shapes given to ``infer_shape`` and ``flops`` are per sample (the batch
dimension is implicit); arrays given to ``forward`` carry the batch dimension first.
Ops are written against the array module of their inputs (``xp_of``) so they run on NumPy and CuPy.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict

from .paramtypes import StrictScalars

__all__ = ["Op", "OpParams", "Context", "Shape"]

Shape = tuple[int, ...]


class OpParams(StrictScalars):
    """Base of every op's parameter model: unknown keys are errors, values are immutable, and a spec's
    scalar must have the field's own type (no ``true`` as 1 channel, no ``"8"`` or ``"yes"``). Numbers must
    be finite (``negative_slope: .inf`` is refused); a field where an infinity means something is typed
    ``cnngraph.paramtypes.FloatOrInf`` (clip bounds, a pad value)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Context:
    """Per-call scratch space: forward saves what backward needs, nothing else.

    ``training`` selects training behaviour (dropout, batch-norm statistics); ``grad`` says whether
    a backward pass will follow, so ``save`` keeps arrays only then.
    """

    __slots__ = ("training", "grad", "saved", "rng", "needs_input_grad", "overwritable")

    def __init__(self, training: bool = False, grad: bool = False, rng: np.random.Generator | None = None):
        self.training = training
        self.grad = grad
        self.saved: dict[str, Any] = {}
        self.rng = rng
        # set by the runner before backward: which inputs need a gradient (lets ops skip dx)
        self.needs_input_grad: tuple[bool, ...] | None = None
        # set by the runner in inference: inputs no one reads afterwards (ops may write into them)
        self.overwritable: tuple[bool, ...] = ()

    def can_overwrite(self, i: int = 0) -> bool:
        """Whether input ``i`` may be reused as the output buffer (in-place activation)."""
        return not self.grad and i < len(self.overwritable) and self.overwritable[i]

    def need_grad(self, i: int = 0) -> bool:
        """Whether input ``i`` needs a gradient (True when unknown)."""
        return self.needs_input_grad is None or self.needs_input_grad[i]

    def save(self, **values: Any) -> None:
        if self.grad:
            self.saved.update(values)


class Op:
    """Base class of layer ops. Subclasses set ``type`` and ``Params`` and override the methods.

    Class attributes
    ----------------
    type : str
        The spec's ``type:`` name (snake_case).
    Params : type[OpParams]
        Pydantic model of the op's parameters.
    arity : (int, int | None)
        Minimum and maximum number of inputs (None = unbounded).
    batch_dependent : bool
        True when one sample's output depends on other samples of the batch (batch norm in training).
    reduces_batch : bool
        True for losses: the output is a scalar for the whole batch.
    grad_inputs : tuple[int, ...] | None
        Indices of inputs that receive gradients (None = all).
    buffers : tuple[str, ...]
        Names among the op's arrays that are state, not trainable parameters (running statistics).
        Update them in place in ``forward`` (``params["running_mean"][...] = ...``): rebinding the
        dict entry would be lost, so the runner refuses it (a PluginError naming the buffer).
    index_targets : bool
        For a loss used by ``cnngraph train`` with class-index targets: True to receive them as int64
        (cross_entropy), False as floats in the model's dtype (binary_cross_entropy, mse).
    int_inputs : tuple[int, ...]
        Input ports that may take an int64 model input (a loss's class-index target always may);
        a spec feeding int64 anywhere else is refused (conv2d on integer labels).
    transposed : bool
        True for an upsampling window op (conv_transpose2d): its ``stride`` spreads the input apart
        instead of skipping over it (used for receptive fields).
    mixes_space : bool
        True when each output position depends on the whole (H, W) input map, through statistics or a
        gate pooled over it (group_norm, squeeze_excitation): its receptive field is global.
    """

    type: ClassVar[str] = ""
    Params: ClassVar[type[OpParams]] = OpParams
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    batch_dependent: ClassVar[bool] = False
    reduces_batch: ClassVar[bool] = False
    grad_inputs: ClassVar[tuple[int, ...] | None] = None
    buffers: ClassVar[tuple[str, ...]] = ()
    index_targets: ClassVar[bool] = False
    transposed: ClassVar[bool] = False
    mixes_space: ClassVar[bool] = False
    int_inputs: ClassVar[tuple[int, ...]] = ()
    plugin: ClassVar[str] = ""  # set by the registry: which plugin registered the op

    def __init__(self, params: OpParams | None = None, layer_id: str = ""):
        self.p = params if params is not None else self.Params()
        self.layer_id = layer_id

    # -- contract ---------------------------------------------------------------------------
    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        """Per-sample output shape from per-sample input shapes; raise ShapeError when invalid."""
        return in_shapes[0]

    def init_params(self, in_shapes: list[Shape], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Initial parameters and buffers as float32 NumPy arrays, keyed by local name."""
        return {}

    def param_shapes(self, in_shapes: list[Shape]) -> dict[str, Shape] | None:
        """The shapes of the arrays ``init_params`` returns, by local name, without making them.

        ``cnngraph summary`` counts parameters from these, so that a large network is counted in
        milliseconds and one too large for memory is still counted. None (the default) means the op does
        not say, and the count falls back to calling ``init_params``. ``check-op`` compares the two.
        """
        return None

    def forward(self, ctx: Context, inputs: list, params: dict[str, Any]):
        """Compute the output from batched inputs; ``ctx.save(...)`` what backward needs."""
        raise NotImplementedError(f"op class {type(self).__qualname__} does not implement forward")

    def backward(self, ctx: Context, grad_out) -> tuple[list, dict[str, Any]]:
        """Return (gradient per input, None where there is none; gradient per parameter)."""
        raise NotImplementedError(f"op class {type(self).__qualname__} does not implement backward (needed to "
                                  f"train or differentiate through it)")

    def flops(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        """Multiply-adds per sample (0 for data movement)."""
        return 0

    @classmethod
    def examples(cls) -> list[tuple[dict, list]]:
        """Sample (params, per-sample input shapes) pairs for ``cnngraph check-op``; [] = generic guess.

        An input shape is a tuple (random float input) or a dict ``{"shape": (), "dtype": "int64",
        "high": 10}`` (integer targets in [0, high)) / ``{"shape": (4,), "low": 0, "high": 1}``
        (floats drawn from a range). Integer inputs are never differentiated; float inputs are when
        listed in ``grad_inputs``.
        """
        return []

    # -- helpers ----------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> str:
        """The first paragraph of the op's docstring, on one line."""
        para = (cls.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(line.strip() for line in para.splitlines())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.p!r})"


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))


def param_shapes_apply(op_cls: type[Op]) -> bool:
    """Whether ``op_cls.param_shapes`` describes its ``init_params``: not where a subclass overrides
    ``init_params`` below the class that declares the shapes (it may make other arrays)."""
    return issubclass(_owner(op_cls, "param_shapes"), _owner(op_cls, "init_params"))
