"""Plans and the transforms they name: the plan format, applying it, widening, sparsity, graph analysis."""
