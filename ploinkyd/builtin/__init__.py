"""Built-in plugins: ordinary modules implementing the same hooks as external plugins."""
