"""``06_analysis``: the report's tables and figures, built only from what the other stages wrote.

Inputs (nothing is recomputed from data or models):

* ``outputs/<profile>/<stage>/``: every stage's ``manifest.json`` and ``metrics.json``; the training
  stages' ``history.csv`` and ``per_class_iou.csv`` (:mod:`fasterseg_core.stages`); the search's
  ``arch_*.json``, ``history.json`` and ``arch_history.json``; 00_data's ``stats.json``; the latency
  records ``outputs/<profile>/latency/*.json`` and the pipeline record ``outputs/<profile>/pipeline.json``.
* The published numbers: the 2022 reproduction study ("the study") and the paper, read by
  :func:`load_published`.

Every builder returns an :class:`Exhibit` (table and/or figure, label, title, caption saying what is shown
and where the numbers come from). A stage that did not run or failed gives a row or panel marked so, never
an error. The exhibit catalogue (:data:`~.catalogue.CATALOGUE`) orders them and numbers their labels
(:func:`build_exhibits`); :func:`contents` lists them:

==============  ==================================================  ========================================
section         what                                                builder
==============  ==================================================  ========================================
(unnumbered)    stages found                                        :func:`stage_status_table`
validation      val mean IU no back / pixel acc / mIoU (Table 1)   :func:`table1`
per_class       per-class test IoU (the study's Figure 1)           :func:`figure1`
speed           params, FLOPs, FPS per machine and backend          :func:`table2`
claims          the claims ledger                                   :func:`claims_exhibit`
paired          per-seed paired differences                         :func:`paired_figure`
curves          training curves beside the study's logs             :func:`training_curves`
compute         compute accounting, extrapolated to 600 epochs      :func:`compute_table`
search          the search story                                    :func:`search_story`
tradeoff        accuracy against latency, peers latency-only        :func:`accuracy_latency`
gain            distillation's per-class gain                       :func:`distillation_gain`
manifest        reproducibility manifest                            :func:`reproducibility`
==============  ==================================================  ========================================

    art, pub = load_artifacts(cfg), load_published()
    t1 = table1(art, pub); t1.save(run.dir); t1        # the last line renders it, caption included
"""

from .accuracy import distillation_gain, figure1, per_class_iou, study_test_iou, table1, training_curves
from .artifacts import STAGES, TRAINED, Artifacts, StageArtifacts, load_artifacts, load_stage
from .catalogue import CATALOGUE, build_exhibits, contents
from .claims import claims_exhibit, ledger, paired_figure, save_ledger
from .exhibit import Exhibit
from .provenance import reproducibility, run_metrics, stage_status_table
from .published import Published, load_published
from .search_story import search_story
from .speed import accuracy_latency, compute_table, table2, trained_networks
from .summary import build_summary, save_summary, summary_html

__all__ = [
    "CATALOGUE",
    "STAGES",
    "TRAINED",
    "Artifacts",
    "Exhibit",
    "Published",
    "StageArtifacts",
    "accuracy_latency",
    "build_exhibits",
    "build_summary",
    "claims_exhibit",
    "compute_table",
    "contents",
    "distillation_gain",
    "figure1",
    "ledger",
    "load_artifacts",
    "load_published",
    "load_stage",
    "paired_figure",
    "per_class_iou",
    "reproducibility",
    "run_metrics",
    "save_ledger",
    "save_summary",
    "search_story",
    "stage_status_table",
    "study_test_iou",
    "summary_html",
    "table1",
    "table2",
    "trained_networks",
    "training_curves",
]
