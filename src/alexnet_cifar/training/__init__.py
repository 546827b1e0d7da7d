"""One training run and its folder: the trainer (``trainer``), its checkpoints (``checkpoint``),
its records (``runlog``, ``records``), the settings a resume keeps (``resume``), the epoch that
validation chooses (``selection``) and the stop protocol (``stop_signals``).

Built on the engine and the package root; knows nothing of studies, reports or the command line.
"""
