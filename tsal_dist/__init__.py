"""tsal_dist: Teacher-Student Asynchronous Learning for facial landmarks, on Ray."""

__version__ = "0.1.0"
