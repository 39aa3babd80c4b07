"""INT8 for every target from one design: statistics and decisions made once in PyTorch, applied per backend.

`design` (points, statistics, ranges, bias correction, simulation) is backend-neutral;
`search` finds a plan that meets the accuracy bar; each `*_backend` module applies a plan
with its toolchain's own quantizer and imports only that toolchain.
"""
