"""Downstream evaluation of pretrained backbones (sslfer-eval): linear probe, fine-tuning, identity 1-NN, Grad-CAM."""
