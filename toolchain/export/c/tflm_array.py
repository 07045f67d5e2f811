"""The .tflite flatbuffer as a C array for TensorFlow Lite Micro users.

``NAME_model_data.h`` declares ``g_NAME_model_data`` and its length;
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


def render_model_data(data: bytes, *, banner: str, name: str, source: str) -> dict[str, str]:
    """``{"h": header text, "c": source text}`` holding ``data``."""
    values = dict(banner=banner, name=name, NAME=name.upper(), length=len(data), source=source)
    return {"h": render("model_data.h.in", **values),
            "c": render("model_data.c.in", **values, data=_hex_body(data))}
