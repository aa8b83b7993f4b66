"""onnx_export, primitive by primitive: each JAX primitive it translates, in a small jitted
function of an input of symbolic sizes, gives JAX's values and shapes in ONNX Runtime at odd
sizes, and the model passes check_model(full_check=True); size arithmetic keeps Python's
floor division for any sign; what it cannot translate is one line naming the primitive and
the line."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax._src import core
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fcn_jax import onnx_export

onnxruntime = pytest.importorskip("onnxruntime", reason="requirements-export.txt: ONNX Runtime")

ODD = (3, 5, 7, 2)  # The sizes every case runs at (its input: spec()).
RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(3, 2, 2, 4)).astype(np.float32)  # HWIO.
MATRIX = RNG.normal(size=(2, 5)).astype(np.float32)


def _h(x):
    return x.shape[1]


def _first(x, axis):
    """x's first row along ``axis``, kept as a size-1 axis (plain indexing can become a gather)."""
    return lax.slice_in_dim(x, 0, 1, axis=axis)


@jax.custom_vjp
def _clipped(x):
    return jnp.clip(x, -1.0, 1.0)


_clipped.defvjp(lambda x: (_clipped(x), x), lambda x, g: (g * (jnp.abs(x) < 1),))


def _scan(x):
    def step(carry, y):
        return carry + y, carry * y

    return lax.scan(step, jnp.zeros_like(x), jnp.stack([x, -2 * x, x + 1]))


def _barrier(x):
    a, b = lax.optimization_barrier((x, x + 1))
    return a * b


def _sharded(x):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    return lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec())) * 2


def _ints(x):
    return (x * 4).astype(jnp.int32)


def _empty_reshape(x):
    """[n, k, w, 2] -> [k, n, 2w] with k = 0 at h = 5: ONNX's Reshape would copy n for k."""
    k = (_h(x) - 5) % 3
    return lax.slice_in_dim(x, 0, k, axis=1).reshape(k, x.shape[0], 2 * x.shape[2])


def _canvas_pad(x):
    """Symbolic amounts: up to 32 rows, and up to the next multiple of 4 columns."""
    h, w = x.shape[1:3]
    rows = core.max_dim(h, 32) - h
    cols = -(-w // 4) * 4 - w
    return lax.pad(x, 0.5, ((0, 0, 0), (0, rows, 0), (1, cols, 0), (0, 0, 0)))


# case id -> (the primitive it must produce, the function of x). "prim:variant" ids.
CASES = {
    "neg": ("neg", lambda x: -x),
    "exp": ("exp", jnp.exp),
    "log": ("log", lambda x: jnp.log(jnp.abs(x) + 0.1)),
    "sqrt": ("sqrt", lambda x: lax.sqrt(jnp.abs(x))),
    "abs": ("abs", jnp.abs),
    "floor": ("floor", lambda x: jnp.floor(3 * x)),
    "ceil": ("ceil", lambda x: jnp.ceil(3 * x)),
    "tanh": ("tanh", jnp.tanh),
    "logistic": ("logistic", jax.nn.sigmoid),
    "sign": ("sign", jnp.sign),
    "sign:int": ("sign", lambda x: jnp.sign(_ints(x))),
    "not:bool": ("not", lambda x: ~(x > 0)),
    "not:int": ("not", lambda x: ~_ints(x)),
    "stop_gradient": ("stop_gradient", lambda x: lax.stop_gradient(x) * 2),
    "copy": ("copy", lambda x: jnp.copy(x) * 2),
    "optimization_barrier": ("optimization_barrier", _barrier),
    "sharding_constraint": ("sharding_constraint", _sharded),
    "add": ("add", lambda x: x + jnp.flip(x, 3)),
    "sub": ("sub", lambda x: x - jnp.array([1.0, -2.0])),
    "mul": ("mul", lambda x: x * _first(x, 1)),
    "div": ("div", lambda x: x / (jnp.abs(_first(x, 3)) + 0.5)),
    "div:int": ("div", lambda x: lax.div(_ints(x), 3)),  # Rounds toward zero, as ONNX.
    "max": ("max", lambda x: jnp.maximum(x, 0.2)),
    "min": ("min", lambda x: jnp.minimum(x, _first(x, 2))),
    "pow": ("pow", lambda x: lax.pow(jnp.abs(x) + 0.5, x)),
    "and:bool": ("and", lambda x: (x > 0) & (x < 1)),
    "and:int": ("and", lambda x: _ints(x) & 6),
    "or:bool": ("or", lambda x: (x > 1) | (x < -1)),
    "or:int": ("or", lambda x: _ints(x) | 5),
    "eq": ("eq", lambda x: jnp.floor(x) == 0),
    "ne": ("ne", lambda x: jnp.floor(x) != 0),
    "lt": ("lt", lambda x: x < 0.3),
    "le": ("le", lambda x: jnp.floor(x) <= 0),
    "gt": ("gt", lambda x: x > jnp.flip(x, 3)),
    "ge": ("ge", lambda x: jnp.floor(x) >= 0),
    "reduce_max": ("reduce_max", lambda x: jnp.max(x, axis=(1, 2))),
    "reduce_min": ("reduce_min", lambda x: jnp.min(x, axis=2)),
    "reduce_sum": ("reduce_sum", lambda x: jnp.sum(x, axis=(0, 1))),
    "rsqrt": ("rsqrt", lambda x: lax.rsqrt(jnp.abs(x) + 1)),
    "integer_pow": ("integer_pow", lambda x: x**3 + (jnp.abs(x) + 1) ** -2),
    "select_n": ("select_n", lambda x: jnp.where(x > 0, x, -2 * x)),
    "select_n:int": ("select_n", lambda x: lax.select_n((x > 0).astype(jnp.int32), x, -x)),
    "clamp": ("clamp", lambda x: lax.clamp(-0.5, x, 0.5)),
    "convert_element_type": ("convert_element_type", _ints),
    "convert_element_type:uint8": (
        "convert_element_type",
        # In range: XLA saturates out-of-range casts, ONNX's Cast wraps them around.
        lambda x: jnp.minimum(jnp.abs(x * 50), 255).astype(jnp.uint8).astype(jnp.float32),
    ),
    "broadcast_in_dim": (
        "broadcast_in_dim",
        lambda x: lax.broadcast_in_dim(
            lax.index_in_dim(x, 0, 3, False), (*x.shape[:3], 4), (0, 1, 2)
        ),
    ),
    "broadcast_in_dim:constant": (
        "broadcast_in_dim",
        lambda x: jnp.concatenate([x, jnp.broadcast_to(jnp.arange(2.0), x.shape)], 1),
    ),
    "reshape": ("reshape", lambda x: x.reshape(x.shape[0], _h(x) * x.shape[2], 2)),
    "reshape:empty": ("reshape", _empty_reshape),
    "squeeze": ("squeeze", lambda x: lax.squeeze(_first(x, 2), (2,))),
    "transpose": ("transpose", lambda x: jnp.transpose(x, (0, 2, 1, 3))),
    "rev": ("rev", lambda x: jnp.flip(x, (1, 2))),
    "slice": ("slice", lambda x: lax.slice(x, (0, 0, 0, 0), (x.shape[0], -(-_h(x) // 2), 3, 2))),
    "slice:strided": ("slice", lambda x: lax.slice(x, (0, 1, 0, 0), x.shape, (1, 2, 3, 1))),
    "dynamic_slice": (
        "dynamic_slice",  # A data-dependent start near the end: clamped, as XLA does.
        lambda x: lax.dynamic_slice_in_dim(
            x, jnp.argmax(_first(_first(_first(x, 0), 2), 3).reshape(-1)) + 2, 3, axis=1
        ),
    ),
    "concatenate": (
        "concatenate",
        lambda x: jnp.concatenate([x, 2 * lax.slice_in_dim(x, 1, None, axis=1)], axis=1),
    ),
    "stack": ("stack", lambda x: jnp.stack([x, -x], 2)),
    "pad": ("pad", lambda x: lax.pad(x, 0.5, ((0, 0, 0), (1, -2, 0), (2, 0, 0), (0, 1, 0)))),
    "pad:symbolic": ("pad", _canvas_pad),
    "iota": ("iota", lambda x: x + lax.broadcasted_iota(jnp.float32, x.shape, 1)),
    "dim_as_value": ("dim_as_value", lambda x: x * _h(x) + x.shape[2] // 2),
    "argmax": ("argmax", lambda x: jnp.argmax(x, axis=2)),
    "conv_general_dilated": (
        "conv_general_dilated",
        lambda x: lax.conv_general_dilated(
            x,
            KERNEL,
            (2, 1),
            ((1, 2), (0, 1)),
            rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
    ),
    "conv_general_dilated:groups": (
        "conv_general_dilated",
        lambda x: lax.conv_general_dilated(
            x,
            KERNEL[:, :, :1],
            (1, 1),
            "SAME",
            feature_group_count=2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
    ),
    "reduce_window_max": (
        "reduce_window_max",
        lambda x: lax.reduce_window(
            x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (0, 1), (0, 0))
        ),
    ),
    "dot_general": ("dot_general", lambda x: jnp.einsum("nhwc,cd->nhwd", x, MATRIX)),
    "dot_general:batch": ("dot_general", lambda x: jnp.einsum("nhwc,nhvc->nhwv", x, x)),
    "jit": ("jit", lambda x: jax.jit(lambda y: y * 2 + 1)(x)),
    "custom_jvp_call": ("custom_jvp_call", jax.nn.relu),
    "custom_vjp_call": ("custom_vjp_call", _clipped),
    "remat2": ("remat2", jax.checkpoint(lambda x: jnp.tanh(x) * 2)),
    "scan": ("scan", _scan),
}


def handled_primitives() -> set[str]:
    """Every primitive name onnx_export translates."""
    methods = {name[3:] for name in dir(onnx_export.Translator) if name.startswith("op_")}
    tables = (onnx_export.UNARY, onnx_export.BINARY, onnx_export.REDUCE)
    return methods | {"scan"} | set().union(*tables, onnx_export.IDENTITY, onnx_export.SUBPROGRAMS)


def primitives_in(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
                    names |= primitives_in(getattr(sub, "jaxpr", sub))
    return names


def spec():
    """float32 [n, h, w, 2], h and w at least 3 (the cases slice 3 rows or columns)."""
    dims = jax.export.symbolic_shape("n, h, w, 2", constraints=("h >= 3", "w >= 3"))
    return jax.ShapeDtypeStruct(dims, jnp.float32)


def run_onnx(model, x):
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_every_translated_primitive_has_a_case():
    assert {prim for prim, _ in CASES.values()} == handled_primitives()


@pytest.mark.parametrize("case", sorted(CASES))
def test_primitive_matches_jax(case):
    prim, fn = CASES[case]
    assert prim in primitives_in(jax.make_jaxpr(fn)(spec()).jaxpr), f"{case} makes no {prim}"
    # Each case's own input, whichever tests ran before it on this worker.
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    wants = jax.tree.leaves(jax.jit(fn)(x := rng.normal(size=ODD).astype(np.float32) * 1.5))
    model = onnx_export.to_onnx(fn, spec(), "x", [f"y{i}" for i in range(len(wants))])
    for got, want in zip(run_onnx(model, x), wants):
        want = np.asarray(want)
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _sizes(h, w, max_dim=core.max_dim, min_dim=core.min_dim):
    """Sizes whose parts are negative at small h, w: JAX prints them as floordiv(h, -4),
    mod(h - 40, 3), h^2 + w - 5 ... (Python's // and %, also on plain ints)."""
    return (
        (h - 40) // 3 + 20,
        -(-h // 2),
        -(h // -4),
        (h - 40) % 3,
        (w - 50) // 7 + 10,
        max_dim(h - 40, 0) + min_dim(w, 9),
        h * h + w - 5,
    )


def test_size_expressions_keep_python_semantics_for_any_sign():
    """floordiv and mod as Python computes them (ONNX Div alone truncates toward zero), and
    powers before sums (h^2 + w - 5 is no xor)."""

    def fn(x):
        return [lax.iota(jnp.int32, size) for size in _sizes(*x.shape[1:3])]

    model = onnx_export.to_onnx(fn, spec(), "x", [f"y{i}" for i in range(7)])
    for h, w in ((33, 47), (5, 7)):
        got = run_onnx(model, np.zeros((1, h, w, 2), np.float32))
        want = _sizes(h, w, max, min)
        assert [len(g) for g in got] == list(want), (h, w)


def test_a_ceil_division_slice_keeps_jax_shape():
    """The issue's case: lax.slice to -(-h // 2) rows at h = 33 gave 16 rows, not 17."""
    fn = CASES["slice"][1]
    model = onnx_export.to_onnx(fn, spec(), "x", ["y"])
    (got,) = run_onnx(model, np.ones((1, 33, 47, 2), np.float32))
    assert got.shape == (1, 17, 3, 2)


@pytest.mark.parametrize(
    "fn, what",
    [
        (lambda x: jnp.cumsum(x, 1), "'cumsum' .*no ONNX translation"),
        (
            lambda x: lax.pad(x, 0.0, ((0, 0, 0), (0, 0, 1), (0, 0, 0), (0, 0, 0))),
            "'pad' .*interior",
        ),
    ],
    ids=["unknown", "interior_pad"],
)
def test_what_cannot_be_translated_is_one_line_naming_primitive_and_line(fn, what):
    with pytest.raises(onnx_export.UntranslatableError, match=what) as raised:
        onnx_export.to_onnx(fn, spec(), "x", ["y"])
    message = str(raised.value)
    assert "\n" not in message and "test_onnx_export.py:" in message, message


def test_the_model_declares_the_lowest_ir_version_of_its_opset():
    """IR 8 for opset 18 (ONNX 1.13): older ONNX Runtime, TensorRT and OpenVINO read it."""
    serialized = onnx_export.to_onnx(jnp.tanh, spec(), "x", ["y"], metadata={"k": "v"})
    model = onnx_export.onnx.load_from_string(serialized)
    assert model.ir_version == 8 and model.opset_import[0].version == onnx_export.OPSET
    assert {p.key: p.value for p in model.metadata_props} == {"k": "v"}
    session = onnxruntime.InferenceSession(serialized)
    assert session.get_modelmeta().custom_metadata_map == {"k": "v"}
