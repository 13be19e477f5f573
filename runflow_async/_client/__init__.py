"""RunflowClient: lifecycle and thin public methods that delegate."""
