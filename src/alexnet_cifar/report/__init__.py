"""The study's report: any set of run folders as tables, figures and a verdict, like the post.

``build_report(run_dirs, out)`` reads each run folder (``config.json``, ``metrics.csv``, and
``result.json`` and ``model.pt`` once the run has finished), and writes into ``out``:

* ``report.md``: renders on GitHub, with the figures as PNG files beside it;
* ``report.html``: the same in one self-contained file (figures inlined, CSS inline, no script);
* ``summary.json``: every number of the tables per run, the figure files and the best variant;
* the PNG figures (Matplotlib, Agg): learning curves of all runs, train vs test (or validation)
  per run, model sizes, and the confusion matrix and per-class accuracy of the best run.

Definitions used throughout: the generalisation gap is the final train accuracy minus the final
test accuracy; the train figures are the epoch averages Keras reports (augmentation and dropout
on); a run overfits when its per-epoch loss (of its validation images where it has a split, else
of the test set) ends more than ``OVERFIT_RISE`` above its minimum.

The modules, each one job: ``runs`` reads run folders, ``numbers`` holds each run's numbers and
the post's figures, ``figures`` draws, ``document`` writes Markdown and renders it as HTML
(python-markdown), ``cells`` formats every number, ``columns`` specifies the tables,
``verdict`` says which run or variant is best, ``sections`` writes each part, and ``compose``
puts the report together and writes it. With several seeds per variant, ``aggregate`` groups
the runs and tests the post's claims with the statistics of ``stats``, ``seed_sections`` writes
their sections (and the one on model selection by a validation split) and ``seed_figures``
draws their curves.
"""

from ..errors import ReportError
from .compose import build_report
from .numbers import OVERFIT_RISE, POST_BEST, PUBLISHED_ACCURACY, run_summary
from .runs import RunData, load_run, load_runs

__all__ = [
    "OVERFIT_RISE",
    "POST_BEST",
    "PUBLISHED_ACCURACY",
    "ReportError",
    "RunData",
    "build_report",
    "load_run",
    "load_runs",
    "run_summary",
]
