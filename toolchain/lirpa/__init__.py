"""Certified bounds for vst networks (auto_LiRPA behind a small API).

``Bounder`` and ``margin_matrix`` live in :mod:`toolchain.lirpa.bounds`;
:mod:`toolchain.lirpa.compat` mends auto_LiRPA 0.3 for torch 2.13 / numpy 2.
Importing this package imports neither torch nor auto_LiRPA.
"""
