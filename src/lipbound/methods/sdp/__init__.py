"""The LipSDP family: global (and, for the decomposition-based methods, box-local) l2 upper bounds from
diagonal multipliers of the LipSDP-Neuron LMI, each certified in float64.

Methods: ``eclipse-fast``, ``eclipse-g1``, ``eclipse-g2-balance`` / ``-jacobi`` / ``-gershgorin``,
``eclipse-g3``, ``eclipse-g3-balance``, ``eclipse-family`` (closed forms), ``eclipse`` (one SDP per layer),
``lipsdp-neuron``, ``lipsdp-layer`` (cvxpy) and ``lipsdp-opt`` (barrier optimisation of the multipliers).

Where the mathematics lives (notation: ../shared/reference/l2-sdp-family.md):
* `prepare` -- the normalised dense chain (`Prepared`, `ScaledWeights`, `prepare`, `local_slopes`) and
  the float64 linear algebra (`gram`, `gram_t`, `lam_max`, `lanczos_max`);
* `certificate` -- THE certificate: the exact sequential decomposition `run_chain` (Cholesky of every
  pivot, with its rounding margin), `full_lmi_min_eig`, `CertificateError` and every numerical margin;
* `closed_forms` -- the multiplier policies G1 (ECLipsE-Fast), G2, G3 and eclipse-family's member table;
* `solvers` -- cvxpy formulations (LipSDP-Neuron / -Layer, ECLipsE's per-layer SDP);
* `barrier` -- lipsdp-opt's optimiser (PD-by-construction phase, log-det barrier path following, L-BFGS);
* `dual` -- lipsdp-opt's certified LOWER bound on the LipSDP-Neuron optimum (not on the Lipschitz constant):
  a Newton-centred dual point of the barrier, checked in float64 (sdp_lower, sdp_gap, reference §10);
* `methods` -- the registrations: every method turns its multipliers into a value through `run_chain`.
"""

from . import methods  # noqa: F401  (registers the methods)
