"""The op conformance suite behind ``cnngraph check-op``: does an op keep the :class:`cnngraph.Op` contract?

For each example of an op (``Op.examples()``, or a generic guess when it declares none) it checks:

- **shape**: ``infer_shape`` agrees with the shape ``forward`` returns (training and inference);
- **params**: ``init_params`` returns NumPy arrays (of the shapes ``param_shapes`` declares, where it does),
  ``flops`` a non-negative integer;
- **in-place writes**: ``forward`` leaves its inputs and trainable parameters unchanged (``buffers`` may be
  updated), ``backward`` its incoming gradient;
- **determinism**: two forwards with the same ``ctx.rng`` seed give the same output (no global random state);
- **dtype**: float32 and float64 both run forward and backward, and outputs and gradients keep the
  dtype (and the shape) of what they belong to;
- **gradient**: ``backward`` agrees with central finite differences in float64, for every float input
  the op differentiates and every trainable parameter (coordinate by coordinate for small tensors,
  along random directions for larger ones), in training and in inference mode;
- **batch**: a sample's output does not depend on the batch size or on the other samples of the batch
  (inference mode for ops declaring ``batch_dependent = True``; training mode too for the others unless
  they are stochastic in training; skipped for losses, whose output is one number for the batch);
- **receptive field**: on a (C, H, W) example, no output pixel reads input pixels further apart along both
  axes than the op's declared geometry allows (``mixes_space`` for a map-wide statistic).

Every op is called directly (no graph), with a fixed seed, so results are reproducible.

>>> from cnngraph.conformance import check_op
>>> all(r.ok is not False for r in check_op("relu"))
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from pydantic import ValidationError

from .errors import CnnGraphError, PluginError, ShapeError
from .op import Context, Op, param_shapes_apply
from .blame import defined_at, source_line
from .runner import LayerParams, MissingParam, init_params_problem, replaced_buffers

__all__ = ["CheckResult", "InputSample", "check_op", "check_ops", "examples_for", "format_results"]

BATCH = 3
FD_STEP = 1e-6
RTOL = 1e-5
FD_NOISE = 64 * np.finfo(np.float64).eps   # rounding of one loss evaluation, in ulps
FULL_FD_MAX = 24        # tensors up to this size are checked coordinate by coordinate
DIRECTIONS = 4          # random directions for larger tensors
DETERMINISM_TOL = 1e-12  # two identical calls may differ by summation order (threaded BLAS), not by more
GENERIC_SHAPES = ((3, 6, 6), (6,), (3, 6))


@dataclass
class CheckResult:
    """One line of a conformance report. ``ok`` is True (PASS), False (FAIL) or None (SKIP)."""

    op: str
    case: str
    check: str
    ok: bool | None
    detail: str = ""
    plugin: str = ""

    @property
    def status(self) -> str:
        return "PASS" if self.ok else ("SKIP" if self.ok is None else "FAIL")

    def line(self) -> str:
        return f"{self.status}  {self.op} {self.case}  {self.check}: {self.detail}"


@dataclass(frozen=True)
class InputSample:
    """How to draw one per-sample input: float normal(0, 1), float uniform [low, high), or int in [0, high)."""

    shape: tuple
    dtype: str = "float"       # "float" or "int"
    low: float | None = None
    high: float | None = None

    @classmethod
    def parse(cls, entry: Any) -> "InputSample":
        if isinstance(entry, InputSample):
            return entry
        if isinstance(entry, dict):
            unknown = set(entry) - {"shape", "dtype", "low", "high"}
            if unknown or "shape" not in entry:
                raise ValueError(f"an example input is a shape tuple or a dict with 'shape' and optional 'dtype', "
                                 f"'low', 'high'; found {entry!r}")
            dtype = str(entry.get("dtype", "float"))
            kind = "int" if dtype.startswith("int") else "float"
            if kind == "int" and entry.get("high") is None:
                raise ValueError(f"an integer example input needs 'high' (values drawn from [0, high)); found {entry!r}")
            return cls(tuple(int(d) for d in entry["shape"]), kind, entry.get("low"), entry.get("high"))
        return cls(tuple(int(d) for d in entry))

    def draw(self, rng: np.random.Generator, n: int, dtype) -> np.ndarray:
        shape = (n, *self.shape)
        if self.dtype == "int":
            return rng.integers(int(self.low or 0), int(self.high), size=shape).astype(np.int64)
        if self.low is not None or self.high is not None:
            lo = 0.0 if self.low is None else float(self.low)
            hi = lo + 1.0 if self.high is None else float(self.high)
            return rng.uniform(lo, hi, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
def examples_for(op_cls: type[Op]) -> tuple[list[tuple[dict, list[InputSample]]], str]:
    """The op's examples (parsed), or a generic guess; returns (examples, where they came from)."""
    declared = op_cls.examples()
    if declared:
        out = []
        for params, shapes in declared:
            out.append((dict(params), [InputSample.parse(s) for s in shapes]))
        return out, "examples()"
    try:
        p = op_cls.Params()
    except ValidationError as exc:
        missing = [".".join(str(x) for x in e["loc"]) for e in exc.errors(include_url=False)]
        raise PluginError(f"op '{op_cls.type}' (plugin '{op_cls.plugin}') has required parameters "
                          f"({', '.join(missing)}) and no examples(); add a classmethod examples() returning "
                          f"[(params dict, [per-sample input shapes]), ...]") from None
    op = op_cls(p, f"check.{op_cls.type}")
    n = max(op_cls.arity[0], 1)
    first = None   # the first refusal: a crashing infer_shape must not pass for an op that wants other shapes
    for shape in GENERIC_SHAPES:
        try:
            op.infer_shape([shape] * n)
        except Exception as exc:
            if first is None:
                first = f"on {shape}: {exc if isinstance(exc, CnnGraphError) else _err(exc, op)}"
            continue
        return [({}, [InputSample(shape)] * n)], "generic guess"
    raise PluginError(f"op '{op_cls.type}' (plugin '{op_cls.plugin}') declares no examples() and accepts none of "
                      f"the generic input shapes {', '.join(map(str, GENERIC_SHAPES))} with default parameters "
                      f"(the first refusal, {first}); add a classmethod examples()")


class _Case:
    """One example: the op instance, its inputs in float64 and its initial parameters."""

    def __init__(self, op_cls: type[Op], params: dict, samples: list[InputSample], seed: int, label: str):
        self.op_cls = op_cls
        self.label = label
        self.samples = samples
        self.p = op_cls.Params.model_validate(params)
        self.op = op_cls(self.p, f"check.{op_cls.type}")
        self.shapes = [s.shape for s in samples]
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.xs = [s.draw(rng, BATCH, np.float64) for s in samples]
        self.params = {}
        self.out_shape: tuple | None = None
        grad_ports = op_cls.grad_inputs if op_cls.grad_inputs is not None else range(len(samples))
        self.diff_inputs = [i for i in grad_ports if i < len(samples) and samples[i].dtype == "float"]
        self.buffers = set(self.op.buffers)   # an instance may declare its own (constant, trainable: false)
        self.given: dict = {}                  # the parameters the last forward was given

    def cast(self, dtype, xs=None, params=None):
        xs = self.xs if xs is None else xs
        params = self.params if params is None else params
        cx = [x.astype(dtype) if x.dtype.kind == "f" else x.copy() for x in xs]
        cp = {k: np.asarray(v).astype(dtype) for k, v in params.items()}
        return cx, cp

    def forward(self, xs, params, training, grad=False, rng_seed=None):
        ctx = Context(training=training, grad=grad, rng=np.random.default_rng(self.seed + 1 if rng_seed is None else rng_seed))
        given = LayerParams({k: v.copy() for k, v in params.items()})
        buffers = {k: given[k] for k in self.buffers if k in given}
        try:
            y = self.op.forward(ctx, list(xs), given)
        except MissingParam as exc:
            raise PluginError(f"forward read parameter {exc.args[0]!r}, but init_params returned no "
                              f"{exc.args[0]!r}") from None
        self.given = given   # what forward saw (and may have written into): the in-place check reads it
        replaced = replaced_buffers(buffers, given)
        if replaced:   # the runtime refuses this too: a replaced buffer would be lost
            raise PluginError(replaced)
        return ctx, y

    def backward(self, ctx, gy):
        ctx.needs_input_grad = tuple(i in self.diff_inputs for i in range(len(self.xs)))
        return self.op.backward(ctx, gy)

    def want_shape(self, n):
        if self.op_cls.reduces_batch:
            return ()
        return (n if self.xs else 1, *self.out_shape)   # an op without inputs makes a batch of 1


def _err(exc: Exception, op) -> str:
    """"ValueError at my_op.py:25: boom": the line of the op's file that raised, as train names it."""
    return f"{type(exc).__name__}{source_line(exc, op)}: {exc}"


def _fmt_shape(s) -> str:
    return str(tuple(int(d) for d in s))


def check_op(op: str | type[Op], seed: int = 0, registry=None) -> list[CheckResult]:
    """Run the conformance suite on one op (a registered name or an Op subclass)."""
    if isinstance(op, str):
        from .registry import get_registry
        reg = registry or get_registry()
        try:
            op_cls = reg.op(op)
        except KeyError as exc:
            raise CnnGraphError(exc.args[0] + (reg.empty_note() or "; `cnngraph ops` lists the known types (an op "
                                                "from a plugin file needs --plugin FILE)")) from None
    else:
        op_cls = op
    name = op_cls.type or op_cls.__name__
    plugin = op_cls.plugin or "?"
    results: list[CheckResult] = []

    def add(case, check, ok, detail):
        results.append(CheckResult(name, case, check, ok, detail, plugin))

    try:
        examples, source = examples_for(op_cls)
    except (PluginError, ValueError) as exc:
        add("", "examples", False, str(exc))
        return results
    except Exception as exc:
        add("", "examples", False, f"examples() raised {_err(exc, op_cls)}")
        return results
    for k, (params, samples) in enumerate(examples):
        label = f"#{k + 1}"
        try:
            case = _Case(op_cls, params, samples, seed + 17 * k, label)
        except ValidationError as exc:
            add(label, "params", False, f"example parameters {params!r} are invalid: "
                + "; ".join(e["msg"] for e in exc.errors(include_url=False)))
            continue
        label = f"#{k + 1} {params or '{}'} on {', '.join(_fmt_shape(s) for s in case.shapes) or 'no inputs'}"
        case.label = label
        if source == "generic guess":
            label += " (generic guess: declare examples() to choose)"
            case.label = label
        _run_case(case, add)
        _report_not_run(case, results, add)
    return results


_CHECKS = ("params", "shape (inference)", "shape (training)", "in-place writes", "determinism", "dtype float32", "dtype float64",
           "gradient (float64, training)", "gradient (float64, inference)",
           "batch independence (inference)", "batch independence (training)", "receptive field")


def _report_not_run(case: _Case, results: list[CheckResult], add) -> None:
    """After a failure that stopped an example early, a SKIP line for each check it did not reach."""
    mine = [r for r in results if r.case == case.label]
    failed = next((r.check for r in mine if r.ok is False), None)
    if failed is None:
        return
    ran = {r.check for r in mine}
    planned = list(_CHECKS)
    if case.op_cls.reduces_batch:
        planned[-2:] = ["batch independence"]
    for check in planned:
        if check not in ran:
            add(case.label, check, None, f"not run: the {failed} check failed")


def _run_case(case: _Case, add) -> None:
    label = case.label
    op = case.op
    # shape inference + init
    try:
        case.out_shape = tuple(int(d) for d in op.infer_shape([tuple(s) for s in case.shapes]))
    except ShapeError as exc:
        add(label, "shape", False, f"infer_shape rejected the example: {exc}")
        return
    except Exception as exc:
        add(label, "shape", False, f"infer_shape raised {_err(exc, case.op)}")
        return
    try:
        init = op.init_params([tuple(s) for s in case.shapes], np.random.default_rng(case.seed + 3))
        problem = init_params_problem(init)
        if problem:
            at = defined_at(type(op).init_params)
            add(label, "params", False, problem + (f" ({at})" if at else ""))
            return
        declared = op.param_shapes([tuple(s) for s in case.shapes]) if param_shapes_apply(type(op)) else None
        made = {k: tuple(v.shape) for k, v in init.items()}
        if declared is not None and {k: tuple(v) for k, v in declared.items()} != made:
            add(label, "params", False, f"param_shapes returned {declared!r}, but init_params made {made!r}; "
                f"summary counts parameters from param_shapes")
            return
        case.params = {k: v.astype(np.float64) for k, v in init.items()}
        # perturb so zero-initialised biases and unit scales do not hide mistakes (buffers stay valid)
        rng = np.random.default_rng(case.seed + 5)
        for k, v in case.params.items():
            if k not in case.buffers:
                case.params[k] = v + 0.1 * rng.standard_normal(v.shape)
        flops = op.flops([tuple(s) for s in case.shapes], case.out_shape)
        if not isinstance(flops, (int, np.integer)) or flops < 0:
            add(label, "params", False, f"flops returned {flops!r}, expected a non-negative int")
        else:
            add(label, "params", True, f"{len(case.params)} array(s) "
                f"{', '.join(f'{k}{_fmt_shape(v.shape)}' for k, v in case.params.items()) or '(none)'}; "
                f"{int(flops)} FLOPs/sample")
    except Exception as exc:
        add(label, "params", False, f"init_params/flops raised {_err(exc, case.op)}")
        return

    # forward shape in both modes (on copies of the inputs: a forward writing into them is the next check's)
    changed: dict[int, str] = {}
    for training in (False, True):
        mode = "training" if training else "inference"
        xs = [x.copy() for x in case.xs]
        try:
            _, y = case.forward(xs, case.params, training)
        except PluginError as exc:   # a broken contract, said in full
            add(label, f"shape ({mode})", False, str(exc))
            return
        except Exception as exc:
            add(label, f"shape ({mode})", False, f"forward raised {_err(exc, case.op)}")
            return
        for i, (x, b) in enumerate(zip(xs, case.xs)):
            if not np.array_equal(x, b, equal_nan=True):
                changed.setdefault(i, mode)
        want = case.want_shape(BATCH)
        if not hasattr(y, "shape"):
            add(label, f"shape ({mode})", False, f"forward returned a {type(y).__name__}, expected one array")
            return
        got = tuple(getattr(y, "shape", ()))
        if got != want:
            add(label, f"shape ({mode})", False, f"forward returned shape {got}, infer_shape promised {want} "
                + (f"(batch {want[0]} + per-sample {case.out_shape})" if want else "(one value for the batch)"))
            return
        add(label, f"shape ({mode})", True, f"forward {got} == " + (
            f"batch {want[0]} + infer_shape {case.out_shape}" if want else "() for the whole batch (a loss)"))

    # what the later checks take for granted: nothing written in place, the same output for the same ctx.rng
    if not _check_in_place(case, changed, add) or not _check_determinism(case, add):
        return

    # dtypes
    for dt in (np.float32, np.float64):
        _check_dtype(case, dt, add)

    # gradients
    for training in (True, False):
        _check_gradients(case, training, add)

    # batch independence
    _check_batch(case, add)

    # spatial reach vs the geometry summary's receptive fields assume
    _check_reach(case, add)


def _check_in_place(case: _Case, changed: dict[int, str], add) -> bool:
    """Forward leaves its inputs and trainable parameters alone, backward its incoming gradient: another layer
    reading the same tensor, the optimizer, or the caller reusing gy would see the change. False on a failure."""
    check = "in-place writes"
    if changed:
        add(case.label, check, False, f"forward modified its input {', '.join(map(str, changed))} in place "
            f"({changed[next(iter(changed))]} mode); write the result into a new array")
        return False
    trainable = [k for k in case.params if k not in case.buffers]
    try:
        ctx, y = case.forward(case.xs, case.params, True, grad=True)
        given = case.given
        gy = np.random.default_rng(case.seed + 13).standard_normal(np.shape(y))
        sent = gy.copy()
        case.backward(ctx, sent)
    except Exception:   # a crash is the dtype/gradient checks' to report, with their context
        return True
    problems = [f"forward modified parameter '{k}' in place" for k in trainable
                if not np.array_equal(given[k], case.params[k], equal_nan=True)]
    if problems:
        problems[-1] += (" (only the arrays listed in the op's `buffers` may be updated in forward; compute "
                         "from the parameter into a new array)")
    if not np.array_equal(sent, gy, equal_nan=True):
        problems.append("backward modified its incoming gradient gy in place (the caller may still need it: "
                        "write `gy * 2`, not `gy *= 2`)")
    if problems:
        add(case.label, check, False, "; ".join(problems))
        return False
    what = "inputs" + (" and trainable parameters" if trainable else "")
    add(case.label, check, True, f"forward leaves its {what} unchanged, backward its incoming gradient")
    return True


def _check_determinism(case: _Case, add) -> bool:
    """Two forwards with the same ctx.rng seed give the same output: randomness drawn elsewhere (np.random,
    random, time) would make finite differences and the batch checks fail for reasons that are not theirs."""
    check = "determinism"
    try:
        for training in (False, True):
            _, a = case.forward(case.xs, case.params, training)
            _, b = case.forward(case.xs, case.params, training)
            diff = _diff(a, b)
            if diff > DETERMINISM_TOL:
                mode = "training" if training else "inference"
                add(case.label, check, False, f"forward is not deterministic for a fixed ctx.rng (global random "
                    f"state?); draw random numbers from ctx.rng (two {mode}-mode calls differ by {diff:.1e})")
                return False
    except Exception:   # a crash is the later checks' to report
        return True
    add(case.label, check, True, "the same output twice for the same ctx.rng seed, in inference and training")
    return True


def _check_dtype(case: _Case, dt, add) -> None:
    check = f"dtype {np.dtype(dt).name}"
    xs, params = case.cast(dt)
    try:
        ctx, y = case.forward(xs, params, True, grad=True)
    except Exception as exc:
        add(case.label, check, False, f"forward raised {_err(exc, case.op)}")
        return
    if getattr(y, "dtype", None) != np.dtype(dt):
        add(case.label, check, False, f"forward returned {getattr(y, 'dtype', type(y).__name__)} for "
            f"{np.dtype(dt).name} inputs")
        return
    gy = np.ones_like(y)
    try:
        in_grads, p_grads = case.backward(ctx, gy)
    except Exception as exc:
        add(case.label, check, False, f"backward raised {_err(exc, case.op)}")
        return
    problems = _grad_structure(case, in_grads, p_grads, xs, params, dt)
    if problems:
        add(case.label, check, False, "; ".join(problems))
        return
    finite = all(np.all(np.isfinite(a)) for a in [y, *[g for g in in_grads if g is not None], *p_grads.values()])
    if not finite:
        add(case.label, check, False, "non-finite values in the output or gradients")
        return
    add(case.label, check, True, f"forward and backward keep {np.dtype(dt).name}")


def _grad_structure(case: _Case, in_grads, p_grads, xs, params, dt) -> list[str]:
    problems = []
    if not isinstance(in_grads, (list, tuple)) or len(in_grads) != len(xs):
        n = len(in_grads) if isinstance(in_grads, (list, tuple)) else type(in_grads).__name__
        return [f"backward returned {n} input gradients, expected {len(xs)}"]
    if not isinstance(p_grads, dict):
        return [f"backward returned {type(p_grads).__name__} for parameter gradients, expected a dict"]
    checks = [(f"input {i}", in_grads[i], xs[i]) for i in case.diff_inputs]
    checks += [(f"parameter '{k}'", p_grads.get(k), v) for k, v in params.items() if k not in case.buffers]
    for what, g, like in checks:
        if g is None:
            problems.append(f"no gradient for {what}")
        elif tuple(np.shape(g)) != tuple(like.shape):
            problems.append(f"gradient of {what} has shape {tuple(np.shape(g))}, expected {tuple(like.shape)}")
        elif dt is not None and np.asarray(g).dtype != np.dtype(dt):
            problems.append(f"gradient of {what} is {np.asarray(g).dtype}, expected {np.dtype(dt).name}")
    extra = set(p_grads) - set(params)
    if extra:
        problems.append(f"gradients for unknown parameters: {', '.join(sorted(extra))}")
    return problems


def _check_gradients(case: _Case, training: bool, add) -> None:
    mode = "training" if training else "inference"
    check = f"gradient (float64, {mode})"
    if not case.diff_inputs and not [k for k in case.params if k not in case.buffers]:
        add(case.label, check, None, "nothing to differentiate")
        return
    rng = np.random.default_rng(case.seed + 11)
    xs, params = case.cast(np.float64)
    try:
        ctx, y = case.forward(xs, params, training, grad=True)
        r = rng.standard_normal(np.shape(y))
        r = np.asarray(r, dtype=np.float64)
        # the finite differences' own rounding: eps times the summed loss terms, divided by the step
        noise = FD_NOISE * float(np.sum(np.abs(np.asarray(y, dtype=np.float64) * r))) / FD_STEP
        in_grads, p_grads = case.backward(ctx, r)
    except Exception as exc:
        add(case.label, check, False, f"forward/backward raised {_err(exc, case.op)}")
        return
    problems = _grad_structure(case, in_grads, p_grads, xs, params, None)
    if problems:
        add(case.label, check, False, "; ".join(problems))
        return

    def loss(xs_, params_):
        _, out = case.forward(xs_, params_, training)
        return float(np.sum(np.asarray(out, dtype=np.float64) * r))

    targets = [(f"input {i}", "x", i) for i in case.diff_inputs]
    targets += [(f"param '{k}'", "p", k) for k in case.params if k not in case.buffers]
    worst = 0.0
    details = []
    failed = []
    try:
        for label, kind, key in targets:
            base = xs[key] if kind == "x" else params[key]
            analytic = np.asarray(in_grads[key] if kind == "x" else p_grads[key], dtype=np.float64)
            if not np.all(np.isfinite(analytic)):
                failed.append(f"{label}: the analytic gradient has non-finite values (NaN or inf)")
                continue
            if base.size <= FULL_FD_MAX:
                dirs = []
                for j in range(base.size):
                    d = np.zeros(base.size)
                    d[j] = 1.0
                    dirs.append(d.reshape(base.shape))
                how = "every coordinate"
            else:
                dirs = [rng.standard_normal(base.shape) for _ in range(DIRECTIONS)]
                how = f"{DIRECTIONS} random directions"
            fds, ans = [], []
            for d in dirs:
                def shifted(sign):
                    if kind == "x":
                        xs2 = list(xs)
                        xs2[key] = base + sign * FD_STEP * d
                        return loss(xs2, params)
                    p2 = dict(params)
                    p2[key] = base + sign * FD_STEP * d
                    return loss(xs, p2)
                fds.append((shifted(1) - shifted(-1)) / (2 * FD_STEP))
                ans.append(float(np.sum(analytic * d)))
            if not np.all(np.isfinite(fds)):
                failed.append(f"{label}: the finite differences are non-finite (the loss is NaN or inf near "
                              f"this point)")
                continue
            err, i = _grad_error(np.array(fds), np.array(ans), noise)
            worst = max(worst, err)
            details.append(f"{label} ({how})")
            if err > RTOL:
                failed.append(f"{label}: analytic {ans[i]:.6g} vs finite difference {fds[i]:.6g}")
    except Exception as exc:
        add(case.label, check, False, f"forward raised during finite differences: {_err(exc, case.op)}")
        return
    if failed:
        head = f"max rel. error {worst:.1e} > {RTOL:.0e}; " if worst > RTOL else ""   # else only non-finite ones
        add(case.label, check, False, head + "; ".join(failed))
    else:
        add(case.label, check, True, f"max rel. error {worst:.1e} over {', '.join(details)}")


def _grad_error(fd: np.ndarray, an: np.ndarray, noise: float) -> tuple[float, int]:
    """The largest |fd - an| relative to the gradient's own scale (its largest entry, so a small gradient is
    held to the same relative tolerance as a large one), and where it is. The floor is what float64 finite
    differences can resolve, so a gradient that is zero up to rounding still passes."""
    diff = np.abs(fd - an)
    scale = max(float(np.max(np.abs(fd))), float(np.max(np.abs(an))), noise / RTOL, np.finfo(np.float64).tiny)
    i = int(np.argmax(diff))
    return float(diff[i]) / scale, i


_BATCH_HINT_TRAINING = ("; if the op uses the rest of the batch in training by design (as batch norm does), declare "
                        "the class attribute batch_dependent = True")
_BATCH_HINT_INFERENCE = ("; in inference a sample's output must not depend on the rest of the batch (batch_dependent "
                         "= True exempts training only: batch norm uses running statistics in inference)")


def _check_batch(case: _Case, add) -> None:
    op_cls = case.op_cls
    if op_cls.reduces_batch:
        add(case.label, "batch independence", None, "the op reduces the batch to one value (a loss)")
        return
    if not case.xs:
        add(case.label, "batch independence", None, "the op has no inputs")
        return
    modes = [False]
    skip_training = None
    if op_cls.batch_dependent:
        skip_training = "declares batch_dependent = True; checked in inference mode only"
    else:
        try:
            _, a = case.forward(case.xs, case.params, True, rng_seed=1)
            _, b = case.forward(case.xs, case.params, True, rng_seed=2)
            if np.array_equal(a, b):
                modes.append(True)
            else:
                skip_training = "stochastic in training (uses ctx.rng); checked in inference mode only"
        except Exception as exc:
            add(case.label, "batch independence (training)", False, f"forward raised {_err(exc, case.op)}")
            return
    for training in modes:
        mode = "training" if training else "inference"
        check = f"batch independence ({mode})"
        try:
            _, full = case.forward(case.xs, case.params, training)
            worst = 0.0
            # each sample alone (batch size 1)
            for i in range(BATCH):
                _, one = case.forward([x[i:i + 1] for x in case.xs], case.params, training)
                worst = max(worst, _diff(one[0], full[i]))
            # other samples replaced by fresh ones, and a larger batch
            rng = np.random.default_rng(case.seed + 23)
            other = [s.draw(rng, BATCH + 2, np.float64) for s in case.samples]
            mixed = [np.concatenate([x[:1], o], axis=0) for x, o in zip(case.xs, other)]
            _, y2 = case.forward(mixed, case.params, training)
            worst = max(worst, _diff(y2[0], full[0]))
        except Exception as exc:
            add(case.label, check, False, f"forward raised {_err(exc, case.op)}")
            return
        ok = worst <= 1e-9
        add(case.label, check, ok, f"max difference {worst:.1e} between a sample alone, in its batch and "
            f"among other samples (batch sizes 1, {BATCH}, {BATCH + 3})" + ("" if ok else " > 1e-9" + (
                _BATCH_HINT_TRAINING if training else _BATCH_HINT_INFERENCE)))
    if skip_training:
        add(case.label, "batch independence (training)", None, skip_training)


def _check_reach(case: _Case, add) -> None:
    """On a (C, H, W) example: no output reads input pixels further apart than the receptive field the op's
    declared geometry gives (summary's); a map-wide statistic needs ``mixes_space = True``."""
    from .receptive import GLOBAL, declared_field
    check = "receptive field"
    if case.op_cls.reduces_batch or not case.samples or case.samples[0].dtype != "float" \
            or len(case.shapes[0]) != 3 or len(case.out_shape) != 3:
        add(case.label, check, None, "input 0 and the output are not both (C, H, W) maps")
        return
    try:
        declared = declared_field(case.op, case.shapes, case.out_shape)
    except Exception:   # noqa: BLE001 - a plugin's own geometry helper; summary shows no field for it either
        declared = None
    if declared == GLOBAL or declared is None:
        add(case.label, check, None, "the op mixes the whole map (mixes_space)" if declared == GLOBAL
            else "the op's geometry is not one receptive fields can follow")
        return
    xs = [x[:1].copy() for x in case.xs]
    _, h, w = case.shapes[0]
    try:   # which input pixels (of input 0, all channels) each output pixel reads: one pixel moved at a time
        _, y0 = case.forward(xs, case.params, False)
        y0 = np.asarray(y0, dtype=np.float64)[0]
        tol = 1e-9 * max(1.0, float(np.max(np.abs(y0), initial=0.0)))
        reads = np.zeros(y0.shape[1:] + (h, w), bool)
        for i in range(h):
            for j in range(w):
                moved = [x.copy() for x in xs]
                moved[0][0, :, i, j] += 1.0
                _, y1 = case.forward(moved, case.params, False)
                reads[..., i, j] = np.abs(np.asarray(y1, dtype=np.float64)[0] - y0).max(axis=0) > tol
    except Exception as exc:
        add(case.label, check, False, f"forward raised {_err(exc, case.op)}")
        return
    field = []
    for axis in (0, 1):   # the widest span of input rows (columns) one output pixel reads
        along = reads.any(axis=3 - axis)   # (H', W', h or w)
        spans = [int(np.ptp(np.nonzero(r)[0])) + 1 for r in along.reshape(-1, along.shape[-1]) if r.any()]
        field.append(max(spans, default=0))
    wider = [(name, got, want) for name, got, want in zip("HW", field, declared) if got > want]
    if len(wider) == 2:   # beyond the declared field along both axes: the op mixes the map
        add(case.label, check, False, f"an output pixel reads {field[0]}x{field[1]} input pixels, but the op's "
            f"geometry (kernel_size, stride, source_positions) gives a receptive field of {declared[0]}x{declared[1]}; "
            f"an op whose outputs depend on the whole map (statistics or a gate pooled over it) must set the class "
            f"attribute mixes_space = True, or summary reports a wrong receptive field")
    elif wider:   # one axis only: may be the channels of a channels-last tensor (layer_norm, softmax's axis)
        name, got, want = wider[0]
        add(case.label, check, None, f"an output pixel reads {got} input positions along {name}, beyond the declared "
            f"field of {want}; not a failure: one axis may be the channels of a channels-last tensor")
    else:
        add(case.label, check, True, f"an output pixel reads at most {field[0]}x{field[1]} input pixels, within the "
            f"declared field {declared[0]}x{declared[1]}")


def _diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def check_ops(names: Iterable[str] | None = None, seed: int = 0) -> list[CheckResult]:
    """Run :func:`check_op` on several ops (default: every registered op)."""
    from .registry import get_registry
    reg = get_registry()
    names = sorted(reg.ops) if names is None else list(names)
    out: list[CheckResult] = []
    for n in names:
        out += check_op(n, seed=seed, registry=reg)
    return out


def format_results(results: list[CheckResult]) -> str:
    """One line per check, then a count."""
    lines = [r.line() for r in results]
    failed = sum(r.ok is False for r in results)
    passed = sum(r.ok is True for r in results)
    skipped = sum(r.ok is None for r in results)
    ops = len({r.op for r in results})
    tail = f"{passed} passed, {failed} failed, {skipped} skipped ({ops} op{'s' if ops != 1 else ''})"
    bad = {}
    for r in results:
        if r.ok is False:
            bad.setdefault(r.op, r.plugin)
    if bad:
        tail += "; failing: " + ", ".join(f"{op} (plugin '{plugin}')" for op, plugin in bad.items())
    lines.append(tail)
    return "\n".join(lines)
