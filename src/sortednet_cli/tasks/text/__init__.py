"""Text tasks: GLUE sentence(-pair) classification and regression, and language modelling."""
