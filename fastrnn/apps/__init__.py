"""The character-level language model app and the ``fastrnn`` command line.

One module per concern:

- ``cli``        argument parsing, subcommands ``train`` / ``sample`` / ``bench``, one-line user errors
- ``errors``     the exception classes a user error raises
- ``data``       corpus loading and validation, the vocabulary, contiguous-stream batches
- ``model``      Embedding -> recurrent module (fastrnn or torch.nn) -> Linear
- ``config``     the run configuration and its per-device defaults
- ``checkpoint`` checkpoint format, code-free loads
- ``files``      atomic writes (temp file + os.replace) for checkpoints, log and plot
- ``train``      stateful truncated-BPTT training, single process or DistributedDataParallel
- ``metrics``    CSV log and the loss-curve PNG
- ``threads``    picking the CPU thread count on a shared machine
- ``sample``     streaming generation with a single-step recurrent path
- ``bench``      ``fastrnn bench``: a thin alias of the benchmark harness in ``bench/`` of a source checkout
"""
