"""The .tflite flatbuffer as a C array for TensorFlow Lite Micro users.

``NAME_model_data.h`` declares ``g_NAME_model_data`` and ``g_NAME_model_data_size``
(``model_data.h``, ``g_model_data`` for the default NAME ``model``);
``NAME_model_data.c`` defines them, 16-byte aligned (TFLM reads the
flatbuffer in place). The file is valid C99 with GCC/Clang (aligned
attribute), C11 (``<stdalign.h>``) and C++11 (``alignas`` keyword).

>>> text = render_model_data(b"TFL3", banner="/* vst */", name="m", source="m.tflite")
>>> "extern const unsigned char g_m_model_data[];" in text["h"], "0x54, 0x46" in text["c"]
(True, True)
"""

from __future__ import annotations

from toolchain.export.c.template import render

BYTES_PER_LINE = 12


def _hex_body(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), BYTES_PER_LINE):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + BYTES_PER_LINE]))
    return ",\n".join(lines)


def array_stem(name: str) -> str:
    """File stem and (after ``g_``) symbol of the array, TFLM's convention
    ``g_<name>_model_data``, without doubling ``model``:

    >>> array_stem("kws"), array_stem("model")
    ('kws_model_data', 'model_data')
    """
    return "model_data" if name == "model" else f"{name}_model_data"


def render_model_data(data: bytes, *, banner: str, name: str, source: str) -> dict[str, str]:
    """``{"h": header text, "c": source text}`` holding ``data``."""
    stem = array_stem(name)
    values = dict(banner=banner, stem=stem, STEM=stem.upper(), symbol=f"g_{stem}",
                  length=len(data), source=source)
    return {"h": render("model_data.h.in", **values),
            "c": render("model_data.c.in", **values, data=_hex_body(data))}
