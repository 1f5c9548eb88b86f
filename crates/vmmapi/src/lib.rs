//! vmmapi
