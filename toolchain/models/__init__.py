"""Model IR (layer list), zoo builders and the model file format."""
