"""Codegen workers: render kernels from templates, compile them, link artifacts."""
