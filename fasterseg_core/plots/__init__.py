"""Every figure of the notebooks and the report. Plots only: every number comes in computed
(cebra-figures style), and each function returns a matplotlib ``Figure`` that the caller shows and saves.

=============  =====================================================================================
module         figures
=============  =====================================================================================
:mod:`.data`     ``00_data``: samples with labels, class frequencies, image and crop sizes
:mod:`.search`   ``01_search``: the paper's Fig. 6 drawing, α/β/γ over the epochs, latency against λ
:mod:`.training` training stages: one stage's curves and per-class IoU; the explorer's image view
:mod:`.latency`  ``05_latency``: latency per network and backend
:mod:`.study`    ``06_analysis``: Figure 1 with means, distillation's gain, curves on the study's axis,
                 accuracy against latency
=============  =====================================================================================
"""

from .data import plot_class_frequencies, plot_image_sizes, show_samples
from .latency import plot_latency
from .search import plot_arch_evolution, plot_architecture, plot_search_latency
from .study import (
    MODEL_COLOURS,
    plot_accuracy_latency,
    plot_class_gain,
    plot_paired_differences,
    plot_per_class_iou,
    plot_study_curves,
)
from .training import plot_explorer_view, plot_stage_curves, plot_stage_iou

__all__ = [
    "MODEL_COLOURS",
    "plot_accuracy_latency",
    "plot_arch_evolution",
    "plot_architecture",
    "plot_class_frequencies",
    "plot_class_gain",
    "plot_explorer_view",
    "plot_image_sizes",
    "plot_latency",
    "plot_paired_differences",
    "plot_per_class_iou",
    "plot_search_latency",
    "plot_stage_curves",
    "plot_stage_iou",
    "plot_study_curves",
    "show_samples",
]
