"""warmstart: autoscaling for ML inference fleets with fast, verified image pulls."""
