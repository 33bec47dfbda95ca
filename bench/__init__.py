"""fastrnn's benchmark harness: ``python -m bench`` from the repository root.

One module per concern:

- ``grid``      the standard grid as data (:class:`~bench.grid.Case`), the first-contact subset, run plans, FLOPs
- ``problem``   what every provider of one (case, dtype) shares: module, inputs, upstream gradients, fp64 oracle
- ``providers`` the provider registry: fastrnn (backends, strategies), cudnn, aten, a torch.nn cell loop, ...
- ``gate``      the correctness check against the oracle that every provider passes before it is timed
- ``timing``    the timed step function, CUDA / CPU timers, peak memory
- ``results``   the row schema, the append-and-flush CSV writer and reader, the device/version columns
- ``report``    the PNG plot and the markdown table, rebuilt from any result CSV (``--report``)
- ``run``       the loop over a plan: one row written per (case, dtype, mode, provider), deadline, watchdog
- ``cli``       the command line (``python -m bench``; ``fastrnn bench`` is a thin alias from a checkout)

This package is not installed with fastrnn: it runs from a source checkout. The protocol it implements is in
``bench/README.md``.
"""
