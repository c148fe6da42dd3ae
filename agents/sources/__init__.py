"""Image sources: where the agent gets images from (only the watch folder so far)."""
