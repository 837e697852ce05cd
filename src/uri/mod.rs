//! What a request names, checked before anything else looks at it: the path (normalised once,
//! hostile spellings refused) and the host (a valid name or address). Pure functions on
//! bytes and strings; every layer above may use them.

pub mod host;
pub mod path;
