"""Dense transfer (detection, segmentation): fine-tuning an encoder's backbone on feature maps.

- :mod:`.backbones`: ``build_backbone(encoder)`` -> a multi-level :class:`FeatureBackbone`
  (ResNet stages c2..c5, or a ViTDet-style simple feature pyramid for a ViT);
- :mod:`.checkpointing`: resumable training state, written atomically into the cache folder;
- :mod:`.detection`: Faster / Mask R-CNN built on a backbone, its training loop and inference;
- :mod:`.coco_eval`: COCOeval on clbench's detections (bbox and segm stats);
- :mod:`.segmentation`: semantic segmentation heads and training on the same backbones.

Nothing here is imported by the CLI at start-up; every module imports torch inside functions or
only when it is itself imported by a task's ``run``.
"""
