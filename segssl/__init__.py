"""segssl: config-driven semi-supervised medical image segmentation."""
