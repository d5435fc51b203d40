"""The post service: posts, their edit history, likes and replies."""
