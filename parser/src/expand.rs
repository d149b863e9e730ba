//! Word expansion (placeholder: being written).
