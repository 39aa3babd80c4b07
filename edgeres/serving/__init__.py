"""Serving a verified artifact set with Triton Inference Server (KServe's Open Inference Protocol v2).

`repository` writes a Triton model repository from a set, `triton_model` is the Python-backend
model it carries (edgeres' own preprocessing, and edgeres' runtime where Triton has no backend for
the artifact's format), `server` finds or installs a `tritonserver` binary and runs it, and
`client` sends frames to a served model and checks its answers against the set's golden samples.
"""
