//! The revisioned key space (filled in by the foundation issue).
