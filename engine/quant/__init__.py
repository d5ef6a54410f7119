"""Quantizers as pure functions (lsq, wrpn, binary) and their nn.Module faces (modules)."""
