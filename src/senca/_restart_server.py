"""What the fork server of senca's restart processes imports (``senca._process.WORKER_MODULES``).

The model and the restarts' entry points (:mod:`senca.model.restarts`); then the objects those
imports made are moved out of the cyclic collector's reach (``gc.freeze``). The server keeps
them until it ends, and its ending would otherwise walk every one of them (about a second of
torch's), while it still holds the caller's standard output and error: a ``senca run | tee
log`` or a ``subprocess.run(..., capture_output=True)`` would end that much later than the run.
The restart processes forked from it inherit the frozen objects, which they never free either.
Only the server imports this module: elsewhere it would freeze that process's objects too.
"""

import gc

import senca.model.restarts  # noqa: F401  (imported for the server's children)

gc.freeze()
