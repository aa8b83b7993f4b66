"""ONNX from a JAX program: its jaxpr translated equation by equation.

Why our own translation: an exported FCN takes images of symbolic N, H and W, so its
jaxpr carries sizes such as ``floordiv(h - 1, 2) + 1``. jax2onnx 0.17 fails on them
(its lowerings call ``int()`` on symbolic sizes) and pins an older orbax; tf2onnx
cannot read the XlaCallModule op that jax2tf now emits. The programs use about 40
primitives, each a line or a few of ONNX here, and a size expression becomes ONNX
integer arithmetic on ``Shape(images)``, so one ONNX graph serves every photo size.

What is translated: elementwise math, casts, broadcasts, reshapes, slices (static and
dynamic), pads (symbolic and negative amounts too), concatenation, convolutions (any
dimension numbers, dilation, groups), max pooling, reductions, argmax, einsum-style
``dot_general``, ``iota``, the wrappers (jit, custom_jvp/vjp, checkpoint) and ``scan``
(unrolled: the flip TTA's ``lax.map`` over two views); tests/test_onnx_export.py runs
each against JAX. Size expressions keep Python's floor division and modulo for any
sign (JAX writes a rounding-up division as ``-floordiv(-h, 2)``). Equations of
constants only are computed here and stored as initializers (the bilinear kernels'
re-layouts, BatchNorm's folded factors). Anything else, or a translation that fails,
raises ``UntranslatableError``: one line naming the primitive and the line of fcn_jax
that made it.

The model passes ``onnx.checker.check_model(full_check=True)`` (types and shapes
inferred strictly) and declares the lowest IR version its opset allows, so older
runtimes read it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import string

import jax
import numpy as np
import onnx
from jax._src import source_info_util
from onnx import helper, numpy_helper

OPSET = 18
IR_VERSION = helper.find_min_ir_version_for([helper.make_opsetid("", OPSET)])  # 8

UNARY = {
    "neg": "Neg",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "floor": "Floor",
    "ceil": "Ceil",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "sign": "Sign",
}
# Values passed through unchanged (several, for optimization_barrier).
IDENTITY = ("stop_gradient", "copy", "optimization_barrier", "sharding_constraint")
BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "and": "And",
    "or": "Or",
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
}
REDUCE = {"reduce_max": "ReduceMax", "reduce_min": "ReduceMin", "reduce_sum": "ReduceSum"}
SUBPROGRAMS = ("jit", "custom_jvp_call", "custom_vjp_call", "remat2")  # remat2: jax.checkpoint.
INT64_MIN = np.iinfo(np.int64).min


def _static(dim) -> bool:
    return isinstance(dim, (int, np.integer))


class UntranslatableError(NotImplementedError):
    """A program this module cannot write as ONNX; the message names the primitive and line."""


@dataclasses.dataclass
class Val:
    """A value of the program: a numpy constant, or the name of an ONNX tensor.

    ``lazy``: ``ref`` has size 1 where ``shape`` broadcasts (a broadcast_in_dim not yet
    materialised); elementwise operations broadcast it themselves, others expand it."""

    ref: np.ndarray | str
    shape: tuple
    dtype: np.dtype
    lazy: bool = False

    @property
    def constant(self) -> bool:
        return isinstance(self.ref, np.ndarray) and not self.lazy


class Translator:
    """One program's graph: nodes, initializers and the size arithmetic they share."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.symbols: dict[str, str] = {}  # "h" -> an int64[1] tensor of that size.
        self._dims: dict[str, str] = {}
        # id(array) -> (array, its initializer): a constant used twice (the weights in
        # each unrolled scan step) is stored once. The array is held so its id stays its own.
        self._stored: dict[tuple, tuple[np.ndarray, str]] = {}
        self._folded: dict[tuple, tuple] = {}  # Holding the keys' objects, as _stored.
        self._names = itertools.count()
        self._where = ""

    # -- plumbing ------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._names)}"

    def node(self, op: str, inputs, hint: str | None = None, outputs: int = 1, **attrs):
        names = [self.fresh(hint or op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, array, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def stored(self, array: np.ndarray, layout: tuple | None = None) -> str:
        """The initializer of ``array`` (transposed to ``layout`` if given), made once."""
        key = (id(array), layout)
        if key not in self._stored:
            value = array if layout is None else np.transpose(array, layout)
            self._stored[key] = (array, self.const(value, "weight"))
        return self._stored[key][1]

    def name(self, v: Val) -> str:
        """The ONNX tensor of ``v`` (lazy broadcasts stay lazy: for elementwise use)."""
        return self.stored(v.ref) if isinstance(v.ref, np.ndarray) else v.ref

    def full(self, v: Val) -> str:
        """The ONNX tensor of ``v`` at its whole shape."""
        if not v.lazy:
            return self.name(v)
        return self.node("Expand", [self.name(v), self.shape(v.shape)])

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), "ints")

    # -- sizes ---------------------------------------------------------------------
    def dim(self, d) -> str:
        """An int64[1] tensor holding size ``d``: a constant, or computed from the input's
        shape by the expression JAX printed for it (the syntax of
        ``jax.export.symbolic_shape``)."""
        if _static(d):
            return self.ints([int(d)])
        text = str(d)
        if text not in self._dims:
            # JAX writes powers as h^2, which Python would parse as a bitwise xor.
            parsed = ast.parse(text.replace("^", "**"), mode="eval").body
            self._dims[text] = self._expression(parsed, text)
        return self._dims[text]

    def _expression(self, e, text) -> str:
        if isinstance(e, ast.Constant) and isinstance(e.value, int):
            return self.ints([e.value])
        if isinstance(e, ast.Name) and e.id in self.symbols:
            return self.symbols[e.id]
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
            return self.node("Neg", [self._expression(e.operand, text)], "size")
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Pow):
            if not (isinstance(e.right, ast.Constant) and isinstance(e.right.value, int)):
                raise NotImplementedError(f"size expression {text!r}: a non-constant power")
            base = self._expression(e.left, text)
            return functools.reduce(
                lambda acc, _: self.node("Mul", [acc, base], "size"), range(e.right.value - 1), base
            )
        binary = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul"}
        if isinstance(e, ast.BinOp) and type(e.op) in binary:
            parts = [self._expression(x, text) for x in (e.left, e.right)]
            return self.node(binary[type(e.op)], parts, "size")
        calls = {"floordiv": self._floordiv, "mod": self._mod, "max": "Max", "min": "Min"}
        if isinstance(e, ast.Call) and getattr(e.func, "id", None) in calls and len(e.args) == 2:
            parts = [self._expression(x, text) for x in e.args]
            op = calls[e.func.id]
            return op(*parts) if callable(op) else self.node(op, parts, "size")
        raise NotImplementedError(f"size expression {text!r}: cannot compute {ast.unparse(e)}")

    def _mod(self, a: str, b: str) -> str:
        """Python's ``a % b`` (the sign of ``b``): ONNX Mod of integers with fmod=0."""
        return self.node("Mod", [a, b], "size")

    def _floordiv(self, a: str, b: str) -> str:
        """Python's ``a // b`` for any signs: ONNX Div truncates toward zero, but
        ``a - a % b`` is a multiple of ``b``, which it divides exactly."""
        return self.node("Div", [self.node("Sub", [a, self._mod(a, b)], "size"), b], "size")

    def reshape(self, x: str, dims) -> str:
        """``x`` reshaped to ``dims``. allowzero: a size that is 0 at run time (N = 0, an empty
        slice) means 0, not ONNX's default of copying the input's size at that position."""
        return self.node("Reshape", [x, self.shape(dims)], allowzero=1)

    def shape(self, dims) -> str:
        if all(_static(d) for d in dims):
            return self.ints([int(d) for d in dims])
        return self.node("Concat", [self.dim(d) for d in dims], "shape", axis=0)

    # -- the program ---------------------------------------------------------------
    def run(self, jaxpr, consts, args) -> list[Val]:
        env = {}

        def read(var):
            if hasattr(var, "val"):  # A literal.
                value = np.asarray(var.val, dtype=var.aval.dtype)
                return Val(value, value.shape, value.dtype)
            return env[var]

        for var, value in zip(jaxpr.constvars, consts):
            env[var] = value if isinstance(value, Val) else _constant(value)
        for var, value in zip(jaxpr.invars, args):
            env[var] = value
        caller = self._where  # Inside JAX's own jitted functions: where they were called.
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            self._where = source_info_util.summarize(eqn.source_info) or caller
            outs = self.equation(eqn, ins)
            for var, value in zip(eqn.outvars, outs):
                env[var] = value
        self._where = caller
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, ins: list[Val]) -> list[Val]:
        """The equation's outputs; any failure is one line naming it and where it came from."""
        try:
            return self._translate(eqn, ins)
        except UntranslatableError:
            raise  # From inside a subprogram: it names its own equation.
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise UntranslatableError(
                f"ONNX export: cannot translate the JAX primitive {eqn.primitive.name!r} "
                f"({self._where}): {reason}"
            ) from e

    def _translate(self, eqn, ins: list[Val]) -> list[Val]:
        prim, params = eqn.primitive.name, eqn.params
        avals = [v.aval for v in eqn.outvars]
        if _foldable(prim, ins, avals):
            # Once per equation and inputs: an unrolled scan folds its weights' layouts once.
            key = (id(eqn), *(id(v.ref) for v in ins))
            if key not in self._folded:
                outs = eqn.primitive.bind(*[v.ref for v in ins], **params)
                outs = outs if eqn.primitive.multiple_results else [outs]
                self._folded[key] = (eqn, ins, [_constant(o) for o in outs])
            return self._folded[key][2]
        if prim in IDENTITY:
            return list(ins)
        if prim in SUBPROGRAMS:
            closed = next(params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in params)
            inner = getattr(closed, "jaxpr", closed)
            return self.run(inner, getattr(closed, "consts", ()), ins)
        if prim == "scan":
            return self.scan(ins, **params)
        if prim in UNARY or prim in BINARY:
            return [self.elementwise(ins, avals[0], prim)]
        if prim in REDUCE:
            return [self.reduce(ins, avals[0], REDUCE[prim], params["axes"])]
        handler = getattr(self, f"op_{prim}", None)
        if handler is None:
            raise NotImplementedError("no ONNX translation for it")
        return [handler(ins, avals[0], **params)]

    def result(self, name: str, aval, lazy: bool = False) -> Val:
        return Val(name, tuple(aval.shape), np.dtype(aval.dtype), lazy)

    # -- elementwise -----------------------------------------------------------------
    def elementwise(self, ins, aval, prim):
        lazy = self._keep(ins)
        names = [self.name(v) for v in ins]
        if prim in UNARY:
            return self.result(self.node(UNARY[prim], names), aval, lazy)
        if prim in ("and", "or") and np.dtype(aval.dtype) != np.bool_:
            op = {"and": "BitwiseAnd", "or": "BitwiseOr"}[prim]
            return self.result(self.node(op, names), aval, lazy)
        return self.result(self.node(BINARY[prim], names), aval, lazy)

    @staticmethod
    def _keep(ins) -> bool:
        """Whether an elementwise result stays a lazy broadcast: only when every operand is
        lazy or a constant (a whole-size tensor makes the result whole-size)."""
        return any(v.lazy for v in ins) and all(
            v.lazy or isinstance(v.ref, np.ndarray) for v in ins
        )

    def op_not(self, ins, aval):
        op = "Not" if ins[0].dtype == np.bool_ else "BitwiseNot"  # ONNX's Not takes bool only.
        return self.result(self.node(op, [self.name(ins[0])]), aval, self._keep(ins))

    def op_ne(self, ins, aval):
        equal = self.node("Equal", [self.name(v) for v in ins])
        return self.result(self.node("Not", [equal]), aval, self._keep(ins))

    def op_rsqrt(self, ins, aval, **_):
        root = self.node("Sqrt", [self.name(ins[0])])
        return self.result(self.node("Reciprocal", [root]), aval, self._keep(ins))

    def op_integer_pow(self, ins, aval, y):
        x = self.name(ins[0])
        exponent = self.const(np.asarray(y, ins[0].dtype))
        return self.result(self.node("Pow", [x, exponent]), aval, self._keep(ins))

    def op_select_n(self, ins, aval):
        if len(ins) != 3:
            raise NotImplementedError(f"select_n of {len(ins) - 1} cases")
        which = self.name(ins[0])
        if ins[0].dtype != np.bool_:
            which = self.node("Cast", [which], to=onnx.TensorProto.BOOL)
        out = self.node("Where", [which, self.name(ins[2]), self.name(ins[1])])
        return self.result(out, aval, self._keep(ins))

    def op_clamp(self, ins, aval):
        low, x, high = (self.name(v) for v in ins)
        out = self.node("Min", [self.node("Max", [x, low]), high])
        return self.result(out, aval, self._keep(ins))

    def op_convert_element_type(self, ins, aval, new_dtype, **_):
        to = helper.np_dtype_to_tensor_dtype(np.dtype(new_dtype))
        return self.result(self.node("Cast", [self.name(ins[0])], to=to), aval, ins[0].lazy)

    # -- shapes ----------------------------------------------------------------------
    def op_broadcast_in_dim(self, ins, aval, shape, broadcast_dimensions, **_):
        (x,) = ins
        expanded = [1] * len(shape)
        for i, d in enumerate(broadcast_dimensions):
            expanded[d] = x.shape[i]
        lazy = tuple(expanded) != tuple(shape)
        if x.constant:
            return Val(x.ref.reshape([int(d) for d in expanded]), tuple(shape), x.dtype, lazy)
        out = self.reshape(self.full(x), expanded)
        return self.result(out, aval, lazy)

    def op_reshape(self, ins, aval, new_sizes, dimensions=None, **_):
        if dimensions is not None:
            raise NotImplementedError("reshape with dimensions")
        return self.result(self.reshape(self.full(ins[0]), new_sizes), aval)

    def op_squeeze(self, ins, aval, dimensions):
        return self.result(self.node("Squeeze", [self.full(ins[0]), self.ints(dimensions)]), aval)

    def op_transpose(self, ins, aval, permutation):
        out = self.node("Transpose", [self.full(ins[0])], perm=list(permutation))
        return self.result(out, aval)

    def op_rev(self, ins, aval, dimensions):
        k = len(dimensions)
        inputs = [self.full(ins[0]), self.ints([-1] * k), self.ints([INT64_MIN] * k)]
        out = self.node("Slice", [*inputs, self.ints(dimensions), self.ints([-1] * k)])
        return self.result(out, aval)

    def op_slice(self, ins, aval, start_indices, limit_indices, strides):
        strides = strides or [1] * len(start_indices)
        axes = self.ints(range(len(start_indices)))
        inputs = [self.full(ins[0]), self.ints(start_indices), self.shape(limit_indices)]
        return self.result(self.node("Slice", [*inputs, axes, self.ints(strides)]), aval)

    def op_dynamic_slice(self, ins, aval, slice_sizes):
        x, starts = ins[0], ins[1:]
        begin, end = [], []
        for start, size, whole in zip(starts, slice_sizes, x.shape):
            first = self.node("Cast", [self.name(start)], to=onnx.TensorProto.INT64)
            first = self.reshape(first, [1])
            # As XLA: the start is clamped so that the slice lies inside the operand.
            last_start = self.node("Sub", [self.dim(whole), self.dim(size)])
            first = self.node("Min", [self.node("Max", [first, self.ints([0])]), last_start])
            begin.append(first)
            end.append(self.node("Add", [first, self.dim(size)]))
        begin = self.node("Concat", begin, axis=0)
        end = self.node("Concat", end, axis=0)
        return self.result(self.node("Slice", [self.full(x), begin, end]), aval)

    def op_concatenate(self, ins, aval, dimension):
        out = self.node("Concat", [self.full(v) for v in ins], axis=int(dimension))
        return self.result(out, aval)

    def op_stack(self, ins, aval, axis):
        axes = self.ints([axis])
        parts = [self.node("Unsqueeze", [self.full(v), axes]) for v in ins]
        return self.result(self.node("Concat", parts, axis=int(axis)), aval)

    def op_pad(self, ins, aval, padding_config):
        """Amounts of any sign (negative ones crop, in ONNX as in JAX), symbolic ones too."""
        if any(not _static(interior) or interior for _, _, interior in padding_config):
            raise NotImplementedError("interior padding")
        pads = [lo for lo, _, _ in padding_config] + [hi for _, hi, _ in padding_config]
        x, value = self.full(ins[0]), self.name(ins[1])
        return self.result(self.node("Pad", [x, self.shape(pads), value], mode="constant"), aval)

    def op_iota(self, ins, aval, dtype, shape, dimension, **_):
        del ins
        count = self.node("Squeeze", [self.dim(shape[dimension])])
        zero, one = self.const(np.int64(0)), self.const(np.int64(1))
        line = self.node("Range", [zero, count, one])
        line = self.node("Cast", [line], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        expanded = [1] * len(shape)
        expanded[dimension] = shape[dimension]
        out = self.reshape(line, expanded)
        return self.result(out, aval, lazy=tuple(expanded) != tuple(shape))

    def op_dim_as_value(self, ins, aval, dim):
        del ins
        value = self.node("Squeeze", [self.dim(dim)])
        to = helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype))
        return self.result(self.node("Cast", [value], to=to), aval)

    # -- reductions ------------------------------------------------------------------
    def reduce(self, ins, aval, op, axes):
        out = self.node(op, [self.full(ins[0]), self.ints(axes)], keepdims=0)
        return self.result(out, aval)

    def op_argmax(self, ins, aval, axes, index_dtype):
        index = self.node("ArgMax", [self.full(ins[0])], axis=int(axes[0]), keepdims=0)
        to = helper.np_dtype_to_tensor_dtype(np.dtype(index_dtype))
        return self.result(self.node("Cast", [index], to=to), aval)

    # -- the network's layers --------------------------------------------------------
    def op_conv_general_dilated(
        self,
        ins,
        aval,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        **_,
    ):
        if any(d != 1 for d in lhs_dilation) or batch_group_count != 1:
            raise NotImplementedError("convolution with input dilation or batch groups")
        lhs, rhs = ins
        lhs_spec, rhs_spec, out_spec = dimension_numbers
        x = self.node("Transpose", [self.full(lhs)], perm=list(lhs_spec))
        if rhs.constant:  # OIHW weights, laid out here once.
            kernel = self.stored(rhs.ref, tuple(rhs_spec))
        else:
            kernel = self.node("Transpose", [self.full(rhs)], perm=list(rhs_spec))
        pads = [lo for lo, _ in padding] + [hi for _, hi in padding]
        y = self.node(
            "Conv",
            [x, kernel],
            strides=list(window_strides),
            pads=[int(p) for p in pads],
            dilations=list(rhs_dilation),
            group=int(feature_group_count),
        )
        back = [0] * len(out_spec)
        for i, axis in enumerate(out_spec):
            back[axis] = i
        return self.result(self.node("Transpose", [y], perm=back), aval)

    def op_reduce_window_max(
        self, ins, aval, window_dimensions, window_strides, padding, base_dilation, window_dilation
    ):
        spatial = range(1, len(window_dimensions) - 1)  # NHWC, as the models pool.
        plain = all(
            window_dimensions[a] == 1 and window_strides[a] == 1 and tuple(padding[a]) == (0, 0)
            for a in (0, len(window_dimensions) - 1)
        )
        if not plain or any(d != 1 for d in (*base_dilation, *window_dilation)):
            raise NotImplementedError("max pooling over batch or channels")
        channels_first = [0, len(window_dimensions) - 1, *spatial]
        x = self.node("Transpose", [self.full(ins[0])], perm=channels_first)
        pads = [padding[a][0] for a in spatial] + [padding[a][1] for a in spatial]
        y = self.node(
            "MaxPool",
            [x],
            kernel_shape=[window_dimensions[a] for a in spatial],
            strides=[window_strides[a] for a in spatial],
            pads=[int(p) for p in pads],
        )
        back = [0, *range(2, len(window_dimensions)), 1]
        return self.result(self.node("Transpose", [y], perm=back), aval)

    def op_dot_general(self, ins, aval, dimension_numbers, **_):
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
        lhs, rhs = ins
        letters = iter(string.ascii_lowercase)
        lhs_axes = [next(letters) for _ in lhs.shape]
        rhs_axes = [next(letters) for _ in rhs.shape]
        for a, b in zip((*lhs_contract, *lhs_batch), (*rhs_contract, *rhs_batch)):
            rhs_axes[b] = lhs_axes[a]
        batch = [lhs_axes[a] for a in lhs_batch]
        free_l = [c for i, c in enumerate(lhs_axes) if i not in (*lhs_contract, *lhs_batch)]
        free_r = [c for i, c in enumerate(rhs_axes) if i not in (*rhs_contract, *rhs_batch)]
        equation = f"{''.join(lhs_axes)},{''.join(rhs_axes)}->{''.join(batch + free_l + free_r)}"
        out = self.node("Einsum", [self.full(lhs), self.full(rhs)], equation=equation)
        return self.result(out, aval)

    # -- loops -----------------------------------------------------------------------
    def scan(self, ins, jaxpr, length, num_consts, num_carry, reverse=False, **_):
        """Unrolled: the programs scan a few views (lax.map), never long sequences."""
        consts, rest = ins[:num_consts], ins[num_consts:]
        carry, xs = rest[:num_carry], rest[num_carry:]
        steps = range(length - 1, -1, -1) if reverse else range(length)
        ys = [[None] * length for _ in range(len(jaxpr.jaxpr.outvars) - num_carry)]
        for i in steps:
            sliced = []
            for x in xs:
                item = self.node("Gather", [self.full(x), self.const(np.int64(i))], axis=0)
                sliced.append(Val(item, x.shape[1:], x.dtype))
            outs = self.run(jaxpr.jaxpr, jaxpr.consts, [*consts, *carry, *sliced])
            carry = outs[:num_carry]
            for column, y in zip(ys, outs[num_carry:]):
                column[i] = y
        stacked = []
        for column in ys:
            parts = [self.node("Unsqueeze", [self.full(y), self.ints([0])]) for y in column]
            first = column[0]
            whole = self.node("Concat", parts, axis=0)
            stacked.append(Val(whole, (length, *first.shape), first.dtype))
        return [*carry, *stacked]


def _constant(value) -> Val:
    value = np.asarray(value)
    return Val(value, value.shape, value.dtype)


def _foldable(prim, ins, avals) -> bool:
    """Constants in, sizes known: computed now, stored as an initializer."""
    return (
        prim != "dim_as_value"
        and all(v.constant for v in ins)
        and all(all(_static(d) for d in a.shape) for a in avals)
    )


def _value_info(name, shape, dtype, dim_names):
    dims = [int(d) if _static(d) else dim_names.get(str(d), str(d)) for d in shape]
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims
    )


def to_onnx(fn, spec, input_name: str, output_names, dim_names=None, metadata=None) -> bytes:
    """``fn(x)`` for ``x`` like ``spec`` (a ShapeDtypeStruct of symbolic sizes) as one ONNX
    model, serialized (once: the weights make it large) and checked in full: input
    ``input_name``, outputs ``output_names``. Closed-over arrays (the weights) become
    initializers. ``dim_names`` renames the symbolic sizes in the declared shapes
    (``{"n": "N"}``); ``metadata`` ({str: str}) becomes the model's ``metadata_props``."""
    dim_names = dict(dim_names or {})
    closed = jax.make_jaxpr(fn)(spec)
    t = Translator()
    shape = t.node("Shape", [input_name], "input_shape")
    for axis, d in enumerate(spec.shape):
        if not _static(d) and str(d).isidentifier():
            t.symbols[str(d)] = t.node("Gather", [shape, t.ints([axis])], f"size_{d}", axis=0)
    image = Val(input_name, tuple(spec.shape), np.dtype(spec.dtype))
    outs = t.run(closed.jaxpr, closed.consts, [image])
    outputs = []
    for name, value, aval in zip(output_names, outs, closed.out_avals):
        t.nodes.append(helper.make_node("Identity", [t.full(value)], [name]))
        outputs.append(_value_info(name, aval.shape, aval.dtype, dim_names))
    graph = helper.make_graph(
        t.nodes,
        "fcn_jax",
        [_value_info(input_name, spec.shape, spec.dtype, dim_names)],
        outputs,
        initializer=list(t.initializers.values()),
    )
    model = helper.make_model(
        graph, producer_name="fcn_jax", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata or {}))
    serialized = model.SerializeToString()
    onnx.checker.check_model(serialized, full_check=True)
    return serialized
