"""Infrastructure the trainer owns; imports no task."""
