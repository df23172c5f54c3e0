"""Rebuild kernel.js, the web page's WebAssembly step, from kernel.wat:

    pip install "wasmtime==51.*" && python charrnn/web/build_kernel.py

kernel.js carries the binaries as base64 in a script, as model.js carries the weights, because a
page opened from disk (file://) may not fetch() a .wasm file beside it. It carries two builds of
the same text: as written, with relaxed SIMD, and with each f32x4.relaxed_madd unfused, for the
engines that lack relaxed SIMD.
"""
import base64
from pathlib import Path

HERE = Path(__file__).resolve().parent
MADD = "(f32x4.relaxed_madd "


def expression_end(wat: str, at: int) -> int:
    """The index just past the parenthesised expression that starts at wat[at]."""
    depth = 0
    for end in range(at, len(wat)):
        depth += {"(": 1, ")": -1}.get(wat[end], 0)
        if depth == 0:
            return end + 1
    raise ValueError("kernel.wat's parentheses do not balance")


def unfused(wat: str) -> str:
    """`wat` with each (f32x4.relaxed_madd a b c) written as (f32x4.add (f32x4.mul a b) c)."""
    while (start := wat.find(MADD)) >= 0:
        operands, at = [], start + len(MADD)
        for _ in range(3):  # a b c, each followed by one space or, the last, the call's ")"
            end = expression_end(wat, at)
            operands.append(wat[at:end])
            at = end + 1
        a, b, c = operands
        wat = f"{wat[:start]}(f32x4.add (f32x4.mul {a} {b}) {c}){wat[at:]}"
    return wat


def kernel_js(wat: str) -> str:
    """kernel.js's text for the WebAssembly text `wat`."""
    import wasmtime  # only this build needs it: wasmtime's wat2wasm assembles the text

    relaxed, simd = (base64.b64encode(wasmtime.wat2wasm(text)).decode("ascii") for text in (wat, unfused(wat)))
    return ("// charrnn's WebAssembly step, built from kernel.wat by build_kernel.py: edit those, not this.\n"
            f'const CHARRNN_KERNEL = "{relaxed}";\n'
            f'const CHARRNN_KERNEL_SIMD = "{simd}"; // relaxed_madd unfused: for engines without relaxed SIMD\n')


if __name__ == "__main__":
    (HERE / "kernel.js").write_text(kernel_js((HERE / "kernel.wat").read_text()))
    print(f"wrote {HERE / 'kernel.js'}")
