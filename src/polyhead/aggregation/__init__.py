"""Label aggregation: Dawid-Skene soft labels from several annotators.

* `dawid_skene` / `dawid_skene_sparse`: EM on a label matrix or label triplets;
* `majority_vote_labels` / `vote_fractions_labels`: hard and soft majority vote;
* `aggregate_masks`: ``image,annotator,mask`` CSV -> soft/hard GeoTIFFs, ``train.csv``,
  ``confusion.json``, plots (streaming, bounded memory);
* `aggregate_labels`: ``item,annotator,label`` CSV -> ``labels.csv`` + ``confusion.json``.

The command line is ``polyhead aggregate`` (`polyhead.aggregation.cli`).
"""

from polyhead.aggregation.dawid_skene import (
    DawidSkeneResult,
    confusion_from_posteriors,
    dawid_skene,
    dawid_skene_sparse,
    majority_vote_labels,
    vote_fractions_labels,
)
from polyhead.aggregation.labels import aggregate_labels
from polyhead.aggregation.masks import aggregate_masks
from polyhead.aggregation.outputs import AggregationResult

__all__ = [
    "AggregationResult",
    "DawidSkeneResult",
    "aggregate_labels",
    "aggregate_masks",
    "confusion_from_posteriors",
    "dawid_skene",
    "dawid_skene_sparse",
    "majority_vote_labels",
    "vote_fractions_labels",
]
