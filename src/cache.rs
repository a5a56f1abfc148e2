//! The user cache and verified fetching.
