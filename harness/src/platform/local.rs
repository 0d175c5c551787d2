//! PLACEHOLDER: agents as processes on loopback.
