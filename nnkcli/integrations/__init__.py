"""Where training runs are tracked: experiment trackers and training frameworks (each an optional extra)."""
