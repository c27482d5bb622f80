"""Pictures of networks: graph drawings, training plots, feature maps, filters and Grad-CAM."""
