"""EIE backend (Han et al., ISCA 2016): sparse, weight-shared matrix-vector layers on an
array of processing elements. ``lower`` builds a :class:`~backends.eie.isa.Program` from a
pruned, clustered graph; ``sim`` runs it and models cycles and energy."""
