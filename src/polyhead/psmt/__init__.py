"""A way in from pytorch_segmentation_models_trainer (psmt): its configs and checkpoints.

- `polyhead.psmt.config`: psmt's ``UPerNetDualHead``, ``RandomCropSegmentationDataset`` and
  ``DualHeadKendallLoss`` config entries as polyhead ones (what `polyhead.compat` applies to
  every config, and ``import-psmt`` to a checkpoint's stored config).
- `polyhead.psmt.masks`: psmt's second CSV of hard masks merged into polyhead's
  ``image,mask,soft_mask`` CSV.
- `polyhead.psmt.checkpoint`: a psmt Lightning checkpoint as a polyhead checkpoint.
- `polyhead.psmt.cli`: the ``polyhead import-psmt`` sub-command.

Importing this package imports no torch (``polyhead --help`` stays quick).
"""
