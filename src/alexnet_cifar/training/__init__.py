"""One training run and its folder: what a run is (``run``: its options and what it is built
of), its construction (``build``), the epoch loop (``trainer``), when and what it checkpoints
(``checkpointer``) and the checkpoint files themselves (``checkpoint``), its records
(``runlog``, ``records``), the settings a resume keeps (``resume``), the epoch that validation
chooses (``selection``) and the stop protocol (``stop_signals``).

Built on the engine and the package root; knows nothing of studies, reports or the command line.
"""
