"""The study: several variants and seeds trained into one folder (``runner``), one after
another, side by side in processes of their own on this machine (``pool``, each run a
``worker``) or spread over processes and machines (``executors``: one process, Ray), then
reported."""
