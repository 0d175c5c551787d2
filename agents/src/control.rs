//! PLACEHOLDER: replaced by the control API.
