"""Pure building blocks: errors, config, wire models, requests, filters, estimates."""
