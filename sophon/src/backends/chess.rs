//! Chess (feature `chess`).
