"""The end-to-end experiment pipeline behind ``cwpo run``: stages cached by a hash of their inputs."""
