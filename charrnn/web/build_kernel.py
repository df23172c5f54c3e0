"""Rebuild kernel.js, the web page's WebAssembly step, from kernel.wat:

    pip install "wasmtime==51.*" && python charrnn/web/build_kernel.py

kernel.js carries the binary as base64 in a script, as model.js carries the weights, because a
page opened from disk (file://) may not fetch() a .wasm file beside it.
"""
import base64
from pathlib import Path

HERE = Path(__file__).resolve().parent


def kernel_js(wat: str) -> str:
    """kernel.js's text for the WebAssembly text `wat`."""
    import wasmtime  # only this build needs it: wasmtime's wat2wasm assembles the text

    binary = base64.b64encode(wasmtime.wat2wasm(wat)).decode("ascii")
    return ("// charrnn's WebAssembly step, built from kernel.wat by build_kernel.py: edit those, not this.\n"
            f'const CHARRNN_KERNEL = "{binary}";\n')


if __name__ == "__main__":
    (HERE / "kernel.js").write_text(kernel_js((HERE / "kernel.wat").read_text()))
    print(f"wrote {HERE / 'kernel.js'}")
