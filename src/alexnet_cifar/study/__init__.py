"""The study: several variants and seeds trained into one folder (``runner``), one after
another or spread over processes and machines (``executors``), then reported."""
