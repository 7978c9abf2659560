"""circ's built-in passes, one per module; importing this package registers them all."""
