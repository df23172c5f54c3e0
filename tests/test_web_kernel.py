"""The web page's WebAssembly step (charrnn/web/kernel.wat), run here by wasmtime: the products and
gates it computes for every shape, in both builds (relaxed SIMD, and its multiply-adds unfused), and
kernel.js, the binaries the page carries, built from this source."""
import runpy
from pathlib import Path

import numpy as np
import pytest

wasmtime = pytest.importorskip("wasmtime", reason="pip install wasmtime (the dev extra has it)")
WEB = Path(__file__).resolve().parent.parent / "charrnn" / "web"
BUILD = runpy.run_path(str(WEB / "build_kernel.py"))
WAT = (WEB / "kernel.wat").read_text()
ROOM = 16  # bytes after each vector: the gates read and write whole groups of 4


@pytest.fixture(params=["relaxed", "unfused"])
def wat(request) -> str:
    """kernel.wat as each of the page's two builds assembles it."""
    return WAT if request.param == "relaxed" else BUILD["unfused"](WAT)


class Kernel:
    """kernel.wat (a build of it) instantiated, with float32 vectors placed in its memory."""

    def __init__(self, wat: str):
        self.store = wasmtime.Store()
        module = wasmtime.Module(self.store.engine, wat)
        self.exports = wasmtime.Instance(self.store, module, []).exports(self.store)
        self.memory = self.exports["memory"]
        self.end = 4  # off 16-byte alignment, as a tensor inside the weights may be

    def put(self, array: np.ndarray) -> int:
        """Copy float32 `array` in (followed by a sentinel group); its byte offset."""
        data = np.concatenate([np.asarray(array, np.float32).ravel(), np.full(ROOM // 4, 7.0, np.float32)])
        at, self.end = self.end, self.end + data.nbytes
        if self.end > self.memory.data_len(self.store):
            self.memory.grow(self.store, self.end // 65536 + 1)
        self.memory.write(self.store, data.tobytes(), at)
        return at

    def get(self, at: int, n: int) -> np.ndarray:
        return np.frombuffer(bytes(self.memory.read(self.store, at, at + 4 * n)), np.float32).astype(np.float64)

    def __call__(self, name: str, *args: int) -> None:
        self.exports[name](self.store, *args)


def test_kernel_js_is_built_from_kernel_wat():
    assert (WEB / "kernel.js").read_text() == BUILD["kernel_js"](WAT), \
        "kernel.js is stale: run python charrnn/web/build_kernel.py"


def test_the_unfused_build_runs_where_relaxed_simd_is_missing():
    """Each relaxed_madd, nested ones too, becomes a multiply and an add; an engine without relaxed
    SIMD refuses kernel.wat as written and takes the unfused build."""
    assert BUILD["unfused"]("(f32x4.relaxed_madd (a (b)) (c) (f32x4.relaxed_madd (d) (e) (f)))") \
        == "(f32x4.add (f32x4.mul (a (b)) (c)) (f32x4.add (f32x4.mul (d) (e)) (f)))"
    config = wasmtime.Config()
    config.wasm_relaxed_simd = False
    engine = wasmtime.Engine(config)
    with pytest.raises(wasmtime.WasmtimeError, match="relaxed"):
        wasmtime.Module(engine, WAT)
    wasmtime.Module(engine, BUILD["unfused"](WAT))


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (4, 4), (4, 8), (7, 6), (8, 12), (9, 40), (13, 257), (120, 64)])
def test_affine_is_w_x_plus_b_for_every_shape(wat, rows, cols):
    kernel, rng = Kernel(wat), np.random.default_rng(rows * 1000 + cols)
    w, b, x = (rng.standard_normal(shape).astype(np.float32) for shape in ((rows, cols), rows, cols))
    out = kernel.put(np.zeros(rows))
    kernel("affine", kernel.put(w), kernel.put(b), kernel.put(x), out, rows, cols)
    np.testing.assert_allclose(kernel.get(out, rows), w.astype(np.float64) @ x + b, rtol=1e-5, atol=1e-5)
    assert kernel.get(out + 4 * rows, 1)[0] == 7.0  # nothing written past the end


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("n", [1, 30, 64])
def test_gates_are_pytorchs_cells(wat, n):
    kernel, rng = Kernel(wat), np.random.default_rng(n)
    gi, gh = (rng.standard_normal(4 * n).astype(np.float32) * 4 for _ in range(2))
    state = rng.standard_normal(n).astype(np.float32)
    at_gi, at_gh, at_state = kernel.put(gi), kernel.put(gh), kernel.put(state)
    g = (gi.astype(np.float64) + gh).reshape(4, n)
    h_out, c_out = kernel.put(np.zeros(n)), kernel.put(np.zeros(n))
    kernel("lstm_gates", at_gi, at_gh, at_state, h_out, c_out, n)
    c = sigmoid(g[1]) * state + sigmoid(g[0]) * np.tanh(g[2])
    np.testing.assert_allclose(kernel.get(c_out, n), c, atol=1e-6)
    np.testing.assert_allclose(kernel.get(h_out, n), sigmoid(g[3]) * np.tanh(c), atol=1e-6)
    # a GRU's blocks are r, z, n; the hidden product's n block is scaled by r before the tanh
    kernel("gru_gates", at_gi, at_gh, at_state, h_out, n)
    r, z = sigmoid(g[0]), sigmoid(g[1])
    new = np.tanh(gi[2 * n:3 * n].astype(np.float64) + r * gh[2 * n:3 * n])
    np.testing.assert_allclose(kernel.get(h_out, n), (1 - z) * new + z * state, atol=1e-6)
    kernel("rnn_gates", at_gi, at_gh, h_out, n)
    np.testing.assert_allclose(kernel.get(h_out, n), np.tanh(g[0]), atol=1e-6)


def test_tanh_and_sigmoid_hold_over_the_whole_range():
    """Gate inputs from tiny to past where exp leaves float32: no NaN, no overflow, float32 accuracy."""
    x = np.concatenate([np.linspace(-120, 120, 4001), np.geomspace(1e-8, 1, 400), -np.geomspace(1e-8, 1, 400)])
    kernel, n = Kernel(WAT), len(x)  # the gates are the same in both builds
    zeros, out = kernel.put(np.zeros(n)), kernel.put(np.zeros(n))
    kernel("rnn_gates", kernel.put(x), zeros, out, n)
    np.testing.assert_allclose(kernel.get(out, n), np.tanh(x.astype(np.float32)), atol=2e-7)
    # the LSTM's c_out with c = 0, gates i = sigmoid(x) and g = tanh(big) = 1: sigmoid itself
    inputs = np.concatenate([np.zeros(n), np.zeros(n), np.full(n, 50.0), np.zeros(n)])
    gi, gh = kernel.put(inputs), kernel.put(np.concatenate([x, np.zeros(3 * n)]))
    h_out, c_out = kernel.put(np.zeros(n)), kernel.put(np.zeros(n))
    kernel("lstm_gates", gi, gh, zeros, h_out, c_out, n)
    expected = sigmoid(x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(kernel.get(c_out, n), expected, rtol=1e-6, atol=1e-38)
