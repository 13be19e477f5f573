"""The engine (its task group, slots, admission, budget) and its adapters, batch and map."""
