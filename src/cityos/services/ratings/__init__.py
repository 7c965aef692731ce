"""好差评: ratings, satisfaction and rectification tasks."""
