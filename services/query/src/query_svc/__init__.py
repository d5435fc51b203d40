"""The query service: the read side (post views, timelines, profile views, search)."""
