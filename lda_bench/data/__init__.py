"""Dataset readers and writers (COCO-panoptic, ADE20K) and test-time transforms."""
