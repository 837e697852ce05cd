//! Login machinery: sealed cookies and redirect-target checks.

pub mod redirect;
pub mod seal;
