"""The kernel plan: what a kernel does (loops over a domain, products, fused loops over rows
and components, loads, stores, guards and the memory they use), as data a back end renders.
``nodes`` defines it, ``region`` schedules one block of rows, ``kernels`` builds the plans of a
step's kernels."""
