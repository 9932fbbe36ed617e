"""What the frozen encoder is judged by (k-NN, linear probe, RotNet's per-block protocol) and shown with."""
