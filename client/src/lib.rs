//! corekv client SDK.
